"""`python -m mobileformer`: the seven variants with their parameters and MAdds, as Markdown."""
from . import VARIANT_NAMES, count_madds, create_model, get_config, num_params


def variant_table() -> str:
    rows = ["| variant | params | MAdds (224×224) | tokens M × d | stem | last C | head F |",
            "|---|---:|---:|---|---:|---:|---:|"]
    for name in VARIANT_NAMES:
        config, model = get_config(name), create_model(name)
        rows.append(f"| `{name}` | {num_params(model):,} | {count_madds(model) / 1e6:.1f} M | "
                    f"{config.num_tokens} × {config.token_dim} | {config.stem} | "
                    f"{config.last_channels} | {config.head_width} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(variant_table())
