"""emotion-ssl: self-supervised pretraining of speech emotion encoders."""

from emotion_ssl.models import EmotionEncoder, EncoderConfig, EncoderOutput

__all__ = ["EmotionEncoder", "EncoderConfig", "EncoderOutput"]
__version__ = "0.1.0"
