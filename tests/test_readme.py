"""The README's configuration reference names every config key (it is the documentation)."""

from pathlib import Path

from pydantic import BaseModel

from ssr.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of a pydantic model; list items as `name[].field`."""
    out = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        is_list = getattr(annotation, "__origin__", None) is list
        candidates = getattr(annotation, "__args__", ()) or (annotation,)
        sub = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            out.append(f"{prefix}{name}")
        else:
            out += _keys(sub, f"{prefix}{name}{'[]' if is_list else ''}.")
    return out


def test_every_config_key_is_documented():
    text = README.read_text()
    reference = text[text.index("## Configuration reference"):]
    missing = []
    for key in _keys(RunConfig):
        parent, _, leaf = key.rpartition(".")
        # a row may group siblings: `train.lora.r` / `alpha` / ...
        if f"`{key}`" not in reference and not (parent and f"`{leaf}`" in reference and f"`{parent}." in reference):
            missing.append(key)
    assert not missing, f"keys missing from the README's configuration reference: {missing}"
