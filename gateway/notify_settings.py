"""The ``[notify]`` settings of the gateway file: thresholds of the incident checks and the two channels.

Plain values, read by :mod:`gateway.config` and used by :mod:`gateway.notify`; secrets (the SMTP password,
the webhook's signing secret) are read from a file or the environment at start-up and never shown
(``repr=False``: ``spd-gateway run --check`` prints the settings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_OFFLINE_AFTER_S = 600.0
DEFAULT_HIS_DOWN_AFTER_S = 300.0


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """``[notify.smtp]``: where incident e-mails go."""

    host: str
    sender: str  # the From address
    recipients: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    ca_file: str | None = None  # the CA that signed the mail server's certificate (default: the system's)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """``[notify.webhook]``: an HTTP endpoint that gets each notice as JSON, signed with the shared secret."""

    url: str
    secret: str = field(repr=False)
    timeout_s: float = 5.0
    ca_file: str | None = None  # for https: the CA that signed the endpoint's certificate (default: the system's)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """``[notify]``: incidents are always detected and listed; notices go out on the channels configured."""

    offline_after_s: float = DEFAULT_OFFLINE_AFTER_S  # a device silent this long is one device_offline incident
    his_down_after_s: float = DEFAULT_HIS_DOWN_AFTER_S  # a lane failing this long is the his_down incident
    check_every_s: float = 10.0
    retry_first_s: float = 5.0  # first wait after a failed delivery, doubling up to retry_max_s
    retry_max_s: float = 600.0
    give_up_after_s: float = 86400.0  # a notice not delivered by then is marked failed (and audited)
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("email", self.smtp), ("webhook", self.webhook)) if on is not None)
