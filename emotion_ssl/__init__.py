"""emotion-ssl: self-supervised pretraining of speech emotion encoders.

import emotion_ssl
encoder = emotion_ssl.load_encoder("encoders/mine")        # folder, fairseq .pt or .ckpt
features = emotion_ssl.FeatureExtractor(encoder).extract(list_of_16khz_arrays)
"""

from typing import TYPE_CHECKING, Any

from emotion_ssl.models import EmotionEncoder, EncoderConfig, EncoderOutput

if TYPE_CHECKING:  # what type checkers and editors see; at run time loaded by __getattr__
    from emotion_ssl.export.extract import FeatureExtractor
    from emotion_ssl.export.frozen import load_encoder

__all__ = ["EmotionEncoder", "EncoderConfig", "EncoderOutput", "FeatureExtractor", "load_encoder"]
__version__ = "0.1.0"

# loaded on first use: `import emotion_ssl` stays as light as the model code
_LAZY = {
    "load_encoder": ("emotion_ssl.export.frozen", "load_encoder"),
    "FeatureExtractor": ("emotion_ssl.export.extract", "FeatureExtractor"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'emotion_ssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
