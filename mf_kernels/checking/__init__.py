"""``mf-kernels check``: every op on every backend here against the reference, at the real
Mobile-Former shapes; and the numerics (tolerances, the 2x rule) the test suite shares.

Submodules: :mod:`.numerics` (the rules), :mod:`.sites` (the shapes, read off the reference
model), :mod:`.cases` (building and running one comparison), :mod:`.cli` (the command).
Importing this package imports only :mod:`.numerics`' dependencies (torch).
"""
