"""Model pieces: text encoders/heads (:mod:`.text`), visual encoders (:mod:`.visual`), heads (:mod:`.heads`), the
CCR^k fusion encoder (:mod:`.fusion`)."""
from .fusion import FusionEncoder
from .heads import ITMHead, LanguageDiscriminator, MLMHead
from .text import (LatentMapping, NRCCRTextHead, TextBackbone, default_encoder_path, freeze_encoder, load_text_encoder,
                   load_tokenizer, tiny_text_encoder)
from .visual import FrameTransformer, LinearVisual, MLPVisual, build_visual

__all__ = ["FusionEncoder", "ITMHead", "LanguageDiscriminator", "MLMHead", "LatentMapping", "NRCCRTextHead",
           "TextBackbone", "default_encoder_path", "freeze_encoder", "load_text_encoder", "load_tokenizer",
           "tiny_text_encoder", "FrameTransformer", "LinearVisual", "MLPVisual", "build_visual"]
