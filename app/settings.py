"""Server settings: CLI flags override environment variables (DDPM_*), which override defaults."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator

from engine import (
    DEFAULT_SAMPLER,
    GUIDANCE_RANGE,
    GUIDED_DEFAULT_SAMPLER,
    SamplerName,
    ServerDefaults,
    parse_interval,
)

ENV_PREFIX = "DDPM_"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str, field: str) -> list[Network]:
    """``"10.0.0.1, 192.168.0.0/16"`` → networks; a bad entry is a ValueError naming ``field``."""
    nets = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{field}: {item!r} is not an IP address or network") from None
    return nets


class Settings(BaseModel):
    """Everything ``ddpm serve`` can be told; each field is also read from ``DDPM_<NAME>``."""

    model: str | None = Field(None, description="model file or diffusers folder; default: the bundled MNIST model")
    uncond_model: str | None = Field(None, description="class-conditional models: an unconditional model file for "
                                                       "the 'no label' rows, or 'none' for the model's own; default: "
                                                       "the bundled model's prior for the bundled model, else none")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: str = "auto"
    max_batch: int = Field(64, ge=1, le=4096, description="samples per UNet forward, and the cap on a job's n")
    max_active_jobs: int = Field(32, ge=1, le=4096, description="jobs stepped round-robin; more wait in the queue")
    max_queue: int = Field(64, ge=0, le=100_000, description="jobs waiting beyond the active ones; then 429")
    max_upload_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_upload_pixels: int = Field(4096 * 4096, ge=64)
    frame_every_min: int = Field(1, ge=1, description="floor on a job's frame_every, to cap frames per job")
    event_buffer: int = Field(64, ge=2, description="frames kept per job for slow clients and Last-Event-ID replay")
    job_ttl_s: float = Field(600.0, gt=0, description="a finished job is forgotten this long after it finished or "
                                                      "its last event stream hung up, whichever is later")
    max_finished_jobs: int = Field(256, ge=0, description="finished jobs kept for replay; the oldest one that no "
                                                          "stream reads is forgotten first")
    max_noise_uploads: int = Field(2, ge=1, description="uploads decoded (and inverted) at once by POST /noise and "
                                                         "/invert; more get 429")
    max_likelihood_jobs: int = Field(1, ge=1, description="likelihoods computed at once by POST /likelihood (each "
                                                          "takes about a hundred forward and backward passes); more "
                                                          "get 429")
    max_toy_seconds: float = Field(60.0, gt=0, le=3600, description="the most training seconds a playground job "
                                                                   "(POST /toy/jobs) may ask for")
    toy_share: float = Field(0.25, gt=0, lt=1, description="the share of the worker's time a playground job takes "
                                                           "while sampling jobs run (all of it when none do)")
    toy_orphan_s: float = Field(10.0, gt=0, description="a playground job that no event stream has read for this "
                                                        "long is cancelled: its client went away")
    sampler: SamplerName | None = Field(None, description="the sampler of a request that names none; default: "
                                        f"{GUIDED_DEFAULT_SAMPLER} for class-conditional models (guided), "
                                        f"{DEFAULT_SAMPLER} for unconditional ones")
    guidance: float | None = Field(
        None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1],
        description="guidance scale of a request that gives none (class-conditional models); default: the engine's")
    guidance_interval: tuple[int, int] | None = Field(
        None, description="timesteps T_LO,T_HI where a request that gives no interval is guided (class-conditional "
                          "models); default: the engine's, the lower 55 % of t")
    max_jobs_per_client: int = Field(0, ge=0, description="live jobs one client address may hold; 0: no limit")
    trusted_proxies: str = Field("", description="comma-separated proxy addresses/networks whose X-Forwarded-For "
                                                 "names the client")
    api_token: SecretStr | None = Field(None, description="the API needs Authorization: Bearer <it>")
    cors_origins: str = Field("", description="comma-separated origins allowed to call the API; * for any")

    @field_validator("guidance_interval", mode="before")
    @classmethod
    def _two_timesteps(cls, v: Any) -> Any:
        """``DDPM_GUIDANCE_INTERVAL=0,549`` arrives as one string."""
        return parse_interval(v) if isinstance(v, str) else v

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, v: str) -> str:
        parse_networks(v, "trusted_proxies")
        return v

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters; make one with: "
                             "python3 -c 'import secrets; print(secrets.token_urlsafe())'")
        return v

    @property
    def sampling_defaults(self) -> ServerDefaults:
        """What a request that leaves the sampler or the guidance out gets, over the model kind's defaults."""
        return ServerDefaults(sampler=self.sampler, guidance=self.guidance, guidance_interval=self.guidance_interval)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Defaults, then ``DDPM_*`` environment variables, then non-None ``overrides``."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env is not None and env != "":
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
