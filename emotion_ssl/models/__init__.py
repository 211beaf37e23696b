from emotion_ssl.models.config import EncoderConfig
from emotion_ssl.models.encoder import ContextEncoder, ContextOutput, EmotionEncoder, EncoderOutput

__all__ = ["ContextEncoder", "ContextOutput", "EmotionEncoder", "EncoderConfig", "EncoderOutput"]
