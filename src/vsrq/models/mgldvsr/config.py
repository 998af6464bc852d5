"""Widths and depths of MGLD-VSR's three networks, with the official sizes and a tiny test size.

The ``full`` preset is the configuration of MGLD-VSR's released models
(``configs/mgldvsr/mgldvsr_512_realbasicvsr_deg.yaml`` and
``configs/video_vae/video_autoencoder_kl_64x64x4_resi.yaml``): a Stable Diffusion 2.1 UNet
conditioned by SPADE on a struct-cond encoder, and SD's VAE with a temporal, CFW-fused decoder.
``tiny`` keeps every layer kind at a width that runs in milliseconds on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vsrq.errors import VsrqError

NORM_GROUPS = 32  # every GroupNorm in the official code has 32 groups, so widths are multiples of 32


def _check_widths(owner: str, base: int, mult: tuple[int, ...]) -> None:
    if not mult or any(m < 1 for m in mult):
        raise VsrqError(f"{owner}: channel_mult must be positive, got {mult}")
    if base % NORM_GROUPS:
        raise VsrqError(f"{owner}: base width {base} must be a multiple of {NORM_GROUPS} (GroupNorm groups)")


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a config from JSON: lists become tuples again so equality with the original holds."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class UNetConfig:
    """The denoiser (official ``InflatedUNetModelDualcondV2``).

    ``attention_levels`` are indices into ``channel_mult``; the yaml's ``attention_resolutions:
    [4, 2, 1]`` (downsampling rates) are levels 0, 1 and 2.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    head_channels: int = 64
    context_dim: int = 1024
    struct_channels: int = 256  # the yaml's semb_channels: width of the struct-cond features SPADE reads
    spade_hidden: int = 128  # hard-coded in the official SPADE
    num_frames: int = 5

    def __post_init__(self) -> None:
        _check_widths("unet", self.model_channels, self.channel_mult)
        if any(not 0 <= lvl < len(self.channel_mult) for lvl in self.attention_levels):
            raise VsrqError(f"unet: attention_levels {self.attention_levels} outside 0..{len(self.channel_mult) - 1}")
        if any((self.model_channels * m) % self.head_channels for m in self.channel_mult):
            raise VsrqError(f"unet: every level width must be a multiple of head_channels={self.head_channels}")


@dataclass(frozen=True)
class StructCondConfig:
    """The struct-cond encoder (official ``InflatedEncoderUNetModelWT``): LQ latent -> SPADE features."""

    in_channels: int = 4
    model_channels: int = 256
    out_channels: int = 256
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    num_heads: int = 4

    def __post_init__(self) -> None:
        _check_widths("structcond", self.model_channels, self.channel_mult)
        if any((self.model_channels * m) % self.num_heads for m in self.channel_mult):
            raise VsrqError(f"structcond: level widths must divide into num_heads={self.num_heads}")


@dataclass(frozen=True)
class VideoVAEConfig:
    """SD's KL autoencoder with MGLD-VSR's video decoder (official ``VideoAutoencoderKLResi``, version 1).

    The decoder adds a temporal conv after its middle block and after every up-path res block,
    and a CFW fusion layer at each level except the first and the last, fed by the encoder's
    features of the low-quality frames.
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    num_frames: int = 5
    fusion_blocks: int = 2  # residual dense blocks per CFW layer (official num_fuse_block)
    fusion_growth: int = 32  # their growth channels (num_grow_ch)
    fusion_weight: float = 1.0  # CFW's w: 0 ignores the LQ features, 1 is the trained setting

    def __post_init__(self) -> None:
        _check_widths("vae", self.base_channels, self.channel_mult)


@dataclass(frozen=True)
class MGLDVSRConfig:
    """The three networks together; ``from_dict(to_dict(c)) == c``."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    structcond: StructCondConfig = field(default_factory=StructCondConfig)
    vae: VideoVAEConfig = field(default_factory=VideoVAEConfig)

    def __post_init__(self) -> None:
        if self.structcond.in_channels != self.unet.in_channels:
            raise VsrqError("structcond.in_channels must equal unet.in_channels: both read the latent")
        if self.structcond.out_channels != self.unet.struct_channels:
            raise VsrqError("structcond.out_channels must equal unet.struct_channels: SPADE reads those features")
        if self.unet.num_frames != self.vae.num_frames:
            raise VsrqError("unet.num_frames and vae.num_frames differ: both mix the same frame window")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MGLDVSRConfig":
        return cls(
            unet=_from_dict(UNetConfig, d.get("unet", {})),
            structcond=_from_dict(StructCondConfig, d.get("structcond", {})),
            vae=_from_dict(VideoVAEConfig, d.get("vae", {})),
        )


PRESETS: dict[str, MGLDVSRConfig] = {
    "full": MGLDVSRConfig(),
    "tiny": MGLDVSRConfig(
        unet=UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), head_channels=32, context_dim=32,
                        struct_channels=32, spade_hidden=32, num_frames=2),
        structcond=StructCondConfig(model_channels=32, out_channels=32, num_heads=2),
        vae=VideoVAEConfig(base_channels=32, channel_mult=(1, 1, 2, 2), num_frames=2, fusion_blocks=1,
                           fusion_growth=16),
    ),
}


def resolve_config(config: MGLDVSRConfig | str | dict[str, Any]) -> MGLDVSRConfig:
    """A preset name, a JSON dict (as a manifest stores it) or a config."""
    if isinstance(config, MGLDVSRConfig):
        return config
    if isinstance(config, dict):
        return MGLDVSRConfig.from_dict(config)
    if config not in PRESETS:
        raise VsrqError(f"unknown MGLD-VSR preset {config!r}; known: {', '.join(PRESETS)}")
    return PRESETS[config]
