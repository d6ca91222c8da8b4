"""Node configuration: one typed model, from a YAML file and ``PICARD_*`` environment variables.

Environment variables override the YAML file; nested fields use ``__`` as separator, e.g.
``PICARD_DESTINATIONS='[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}]'``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dicom_node.result_kinds import DEFAULT_KINDS, ResultKind, union

logger = logging.getLogger(__name__)

#: Environment variable naming the YAML config file.
CONFIG_PATH_ENV = "PICARD_CONFIG"


class Destination(BaseModel):
    """A DICOM peer that receives the results (C-STORE SCP).

    Attributes
    ----------
    ae_title : str
        Called AE title of the peer, e.g. ``"ORTHANC"``.
    host : str
        Host name or IP address, e.g. ``"127.0.0.1"``.
    port : int
        TCP port, e.g. ``4242``.
    tls : bool
        Use DICOM TLS for this peer. Default ``False``, e.g. ``True``.
    tls_ca : Path or None
        PEM file of the CA certificate(s) that signed the peer's certificate; ``None``
        (default) uses the system trust store, e.g. ``/etc/picard/pacs-ca.pem``.
    tls_cert : Path or None
        PEM client certificate (chain) to present to the peer when it asks for one; needs
        `tls_key`. Default ``None``, e.g. ``/etc/picard/node.crt``.
    tls_key : Path or None
        PEM private key (unencrypted) of `tls_cert`. Default ``None``, e.g.
        ``/etc/picard/node.key``.
    tls_server_name : str or None
        Name the peer's certificate must carry (subjectAltName DNS or IP); ``None``
        (default) checks it against `host`, e.g. ``"pacs.hospital.example"``.
    tls_check_hostname : bool
        Check the peer's certificate name at all (the chain is verified regardless).
        Default ``True``; ``False`` for peers whose certificates name no host.
    objects : list of ResultKind
        Which result objects this peer gets (README, "What each viewer shows"). Default
        ``["parametric-map", "segmentation", "findings-sr"]``; e.g. ``["key-images",
        "key-object-selection", "mammography-cad-sr"]`` for a PACS viewer that shows
        neither SEG nor Parametric Map. Others: ``expected-tissue``, ``spread-map``.
        Rejection notes withdrawing an earlier result always go with them.
    """

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_server_name: str | None = None
    tls_check_hostname: bool = True
    objects: list[ResultKind] = Field(default_factory=lambda: list(DEFAULT_KINDS), min_length=1)

    @model_validator(mode="after")
    def _check_tls(self) -> "Destination":
        extra = [name for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name")
                 if getattr(self, name) is not None]
        if extra and not self.tls:
            raise ValueError(f"destination {self.ae_title}: {', '.join(extra)} set but tls is "
                             "false; set tls: true")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"destination {self.ae_title}: tls_cert and tls_key go together")
        if len(set(self.objects)) != len(self.objects):
            raise ValueError(f"destination {self.ae_title}: an object kind is named twice")
        return self


class Settings(BaseSettings):
    """Everything the node, the workers and the CLI need to know.

    Attributes
    ----------
    ae_title : str
        The node's own AE title (called AE title it answers to, calling AE title when it
        sends). Default ``"PICARD"``.
    host : str
        Address the storage SCP binds to. Default ``"0.0.0.0"``.
    port : int
        Port of the storage SCP; ``0`` picks a free port. Default ``11112``.
    spool_dir : Path
        Folder for received instances, job state, results and the outbox. Must be shared by
        all workers when they run on several machines. Default ``./spool``.
    broker_url : str or None
        Celery broker, e.g. ``"redis://127.0.0.1:6379/0"``. ``None`` (default) runs an embedded
        worker with a durable on-disk broker under ``spool_dir/broker``.
    destinations : list of Destination
        Where results are sent. Default: none (results stay in the spool).
    series_quiet_seconds : float
        A per-slice series is complete after this many seconds without a new instance.
        Default ``10``.
    series_release_grace_seconds : float or None
        A per-slice series is also complete this many seconds after the association that
        sent its last instance was released normally (for senders that send a series per
        association). ``None`` (default): the quiet period only, e.g. ``2``. A later instance
        reopens the series and the earlier result is withdrawn.
    model_bundle : Path or None
        Model bundle folder; ``None`` uses the bundle shipped in ``models/bundles/default``.
    device : str
        Torch device for the workers: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Default ``"cpu"``.
    inference_mode : {"exact", "fast"} or None
        Overrides the model card's inference mode. ``None`` (default) uses the card's
        (``exact``, the paper's procedure, unless the card records that fast mode was shown
        equal). Results name the mode they were computed in, e.g. ``"fast"`` for the demo.
    worker_concurrency : int
        Processes of the embedded worker. Default ``1``.
    export_retry_base_seconds : float
        First wait before a failed export is retried; doubles each attempt. Default ``5``.
    export_retry_max_seconds : float
        Longest wait between export attempts. Default ``600``.
    dead_letter_after_seconds : float
        A result not delivered after this long goes to ``<spool>/dead-letter`` and waits for
        ``picard-node outbox retry``. Default ``86400`` (one day).
    visibility_timeout_seconds : float
        Redis broker: a job whose worker died unacknowledged is redelivered after this long;
        must exceed the longest job. Default ``3600``.
    allowed_calling_aets : list of str
        Calling AE titles the storage SCP accepts associations from, each optionally bound to
        a source host as ``"AET@host"`` (IP address or host name, resolved at start; the last
        ``@`` separates the host). Others are rejected at association level (A-ASSOCIATE-RJ,
        rejected-permanent, service user, reason 3 "calling AE title not recognized").
        Empty (default) accepts any, e.g. ``["MODALITY1@10.0.0.5", "PACS"]``.
    require_called_ae_title : bool
        Reject associations whose called AE title is not `ae_title` (A-ASSOCIATE-RJ,
        reason 7 "called AE title not recognized"). Default ``True``; ``False`` answers to
        any called AE title.
    tls_cert : Path or None
        PEM server certificate (chain) of the storage SCP. When set with `tls_key`, the SCP
        speaks DICOM TLS only (plain TCP connections fail). Default ``None`` (plain TCP),
        e.g. ``/etc/picard/node.crt``.
    tls_key : Path or None
        PEM private key (unencrypted) of `tls_cert`. Default ``None``, e.g.
        ``/etc/picard/node.key``.
    tls_ca : Path or None
        PEM file of the CA certificate(s) that sign client certificates. When set, every
        client must present a certificate signed by one of them, else the TLS handshake
        fails. Needs `tls_cert`. Default ``None`` (no client certificate asked for), e.g.
        ``/etc/picard/modalities-ca.pem``.
    tls_handshake_seconds : float
        A TLS client that has not completed its handshake after this many seconds is
        disconnected. Default ``30``.
    min_free_bytes : int
        The storage SCP refuses instances (status 0xA700, out of resources) while the spool's
        file system has fewer free bytes than this. Default ``1_000_000_000`` (1 GB), e.g.
        ``5_000_000_000``.
    association_timeout_seconds : float
        ARTIM: a connection must deliver its whole A-ASSOCIATE-RQ within this many seconds of
        being accepted (after the TLS handshake), else it is closed. Default ``15``, e.g.
        ``30`` on slow links.
    idle_timeout_seconds : float
        Network idle timeout: an association (or a PDU half received) that stays silent this
        long is aborted. Default ``60``.
    max_pdu_bytes : int
        Largest P-DATA PDU the SCP accepts (announced as Maximum Length Received in the
        A-ASSOCIATE-AC); a peer announcing a larger PDU is disconnected before anything is
        allocated for it. Default ``4_194_304`` (4 MiB; dcmtk sends 128 KiB PDUs).
    max_associations : int
        Associations in progress at once (after the A-ASSOCIATE-RQ was read); more are
        rejected with A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded. Default ``16``.
    max_associations_per_host : int
        The same, per peer IP address. Default ``8``.
    max_pending_connections : int
        Connections that have not yet delivered an A-ASSOCIATE-RQ, overall; when full, the
        oldest of them is closed to admit a new one (so silent connections cannot lock
        senders out). Default ``64``.
    max_pending_per_host : int
        The same, per peer IP address (the oldest pending connection of that address is
        closed). Default ``16``.
    stuck_after_seconds : float
        Watchdog: a series dispatched this long ago and neither done nor failed is dispatched
        again (every stage is idempotent); after ``3`` such attempts it is marked failed.
        Must exceed the longest job. Default ``7200``, e.g. ``1800`` with a GPU.
    """

    model_config = SettingsConfigDict(env_prefix="PICARD_", env_nested_delimiter="__",
                                      extra="forbid")

    ae_title: str = "PICARD"
    host: str = "0.0.0.0"
    port: int = Field(default=11112, ge=0, le=65535)
    spool_dir: Path = Path("spool")
    broker_url: str | None = None
    destinations: list[Destination] = Field(default_factory=list)
    series_quiet_seconds: float = Field(default=10.0, gt=0)
    series_release_grace_seconds: float | None = Field(default=None, ge=0)
    model_bundle: Path | None = None
    device: str = "cpu"
    inference_mode: Literal["exact", "fast"] | None = None
    worker_concurrency: int = Field(default=1, ge=1)
    export_retry_base_seconds: float = Field(default=5.0, gt=0)
    export_retry_max_seconds: float = Field(default=600.0, gt=0)
    dead_letter_after_seconds: float = Field(default=86400.0, gt=0)
    visibility_timeout_seconds: float = Field(default=3600.0, gt=0)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    min_free_bytes: int = Field(default=1_000_000_000, ge=0)
    require_called_ae_title: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_handshake_seconds: float = Field(default=30.0, gt=0)
    association_timeout_seconds: float = Field(default=15.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    max_pdu_bytes: int = Field(default=4_194_304, ge=16_384, le=1_073_741_824)
    max_associations: int = Field(default=16, ge=1)
    max_associations_per_host: int = Field(default=8, ge=1)
    max_pending_connections: int = Field(default=64, ge=1)
    max_pending_per_host: int = Field(default=16, ge=1)
    stuck_after_seconds: float = Field(default=7200.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value or not value.isascii():
            raise ValueError(f"AE title {value!r} must be 1-16 ASCII characters without '\\'")
        return value

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_allowed_calling_aets(cls, values: list[str]) -> list[str]:
        for entry in values:
            ae, _, host = entry.rpartition("@") if "@" in entry else (entry, "", "")
            ae = ae.strip()
            if not 0 < len(ae) <= 16 or "\\" in ae or not ae.isascii():
                raise ValueError(f"allowed_calling_aets entry {entry!r}: AE title {ae!r} must "
                                 "be 1-16 ASCII characters without '\\'")
            if "@" in entry and not host.strip():
                raise ValueError(f"allowed_calling_aets entry {entry!r} has an empty host "
                                 "after '@'")
        return values

    @model_validator(mode="after")
    def _check_tls(self) -> "Settings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca (client certificate verification) needs tls_cert and "
                             "tls_key (the SCP's own certificate)")
        return self

    @property
    def tls(self) -> bool:
        """True when the storage SCP speaks DICOM TLS (`tls_cert` and `tls_key` set)."""
        return self.tls_cert is not None

    @field_validator("broker_url")
    @classmethod
    def _empty_broker_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def embedded(self) -> bool:
        """True when no broker URL is configured (embedded worker, on-disk broker)."""
        return self.broker_url is None

    @property
    def result_kinds(self) -> list[ResultKind]:
        """The result objects to encode: every kind a destination wants (the default kinds
        when no destination is configured)."""
        if not self.destinations:
            return list(DEFAULT_KINDS)
        return union(d.objects for d in self.destinations)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load settings from a YAML file (optional), ``PICARD_*`` variables and overrides.

    Parameters
    ----------
    path : str or Path, optional
        YAML file; defaults to the file named by ``$PICARD_CONFIG`` if set.
    **overrides
        Field values that win over both file and environment.

    Returns
    -------
    Settings

    Raises
    ------
    ValueError
        If the file cannot be read or does not hold a mapping; the message names the path.
    """
    path = path or os.environ.get(CONFIG_PATH_ENV)
    file_values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config file {str(path)!r}: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(loaded).__name__}")
        file_values = loaded
    # Init arguments beat the environment in pydantic-settings; the environment must beat the
    # file, so file values whose variable is set are dropped before construction.
    values = {k: v for k, v in file_values.items() if not _in_env(k)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


def _in_env(field: str) -> bool:
    return f"PICARD_{field.upper()}" in os.environ
