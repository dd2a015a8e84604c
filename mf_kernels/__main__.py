"""``python -m mf_kernels`` (also the ``mf-kernels`` console script): bench, compare and check."""
import sys


def main(argv=None) -> int:
    from .benchmarking.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
