"""Gateway configuration: defaults, then a TOML file, then ``GATEWAY_*`` environment variables.

Loaded once, in one place, and handed to ``create_app`` and the CLI as a plain dict; nothing else
reads ``os.environ``. Keys are upper-case like Flask's own (``DATABASE_URL``, ``TIMEZONE``).
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict[str, Any] = {
    # where the embedded SQLite file, exports and logs live
    "DATA_DIR": "./var",
    # SQLAlchemy URL; empty means sqlite:///<DATA_DIR>/gateway.db
    "DATABASE_URL": "",
    # a database behind this release's schema: "auto" upgrades it at start-up (one process does, under a
    # lock), "off" refuses to start until `fhir-gateway db upgrade` has run (gateway/store/migrations)
    "SCHEMA_UPGRADE": "auto",
    # Bulk $export NDJSON files (empty = <DATA_DIR>/exports); with several machines, storage they all mount
    "EXPORT_DIR": "",
    "HOST": "127.0.0.1",
    "PORT": 8080,
    # public base URL used in Bundle links and Location headers; empty means derived from the request
    "BASE_URL": "",
    # HIS timestamps without an offset mean local time in this zone; empty means "keep the date only"
    "TIMEZONE": "Asia/Shanghai",
    # charset tried after UTF-8 when MSH-18 is empty (GBK/GB18030 HIS exports are common in Hainan)
    "FALLBACK_CHARSET": "gb18030",
    # patient matching: the assigning authority whose identifier is the patient's key, else type MR
    "PATIENT_ID_AUTHORITY": "",
    # production gateways refuse MSH-11 = T (training) / D (debug) messages
    "ACCEPT_PROCESSING_IDS": "P",
    # answer for a message type no mapping handles: "AR" (refuse) or "AA" (accept, log, warn)
    "UNKNOWN_MESSAGE_ACK": "AR",
    "MAX_MESSAGE_BYTES": 10 * 1024 * 1024,
    # --- bounds (README "Configuration"): what one request may ask of the gateway; over a limit the
    # request is refused whole (HL7 AR, HTTP 413), logged raw, before any of it is mapped or stored
    "MAX_CSV_ROWS": 10000,              # data rows of one CSV export (POST /ingest/<csv mapping>)
    "MAX_TRANSACTION_ENTRIES": 1000,    # entries of one FHIR transaction Bundle (POST /fhir)
    "MAX_BATCH_ENTRIES": 1000,          # entries of one FHIR batch Bundle (POST /fhir)
    "MAX_HL7_ORDERS": 100,              # orders (ORC segments; OBR when there is no ORC) in one HL7 message
    "MAX_ERRORS_REPORTED": 100,         # errors listed in one answer; the rest are counted ("and 912 more")
    "MAPPINGS_DIR": str(REPO_ROOT / "mappings"),
    "PROFILES_DIR": str(REPO_ROOT / "profiles"),
    # per-profile strictness overrides, "canonical=warning,canonical2=error"
    "PROFILE_STRICTNESS": "",
    "ROUTES_FILE": str(REPO_ROOT / "routes.yaml"),
    "REDIS_URL": "",
    # routing delivery workers (gateway/routing): threads per process, outbox poll interval, and the
    # Redis stream shared by worker processes when REDIS_URL is set
    "DELIVERY_THREADS": 4,
    "DELIVERY_POLL_MS": 500,
    "DELIVERY_LEASE_SECONDS": 0,  # how long a worker holds a delivery; 0 = 2 x the longest timeout + 30 s
    "REDIS_STREAM": "",           # empty = lecheng:<deployment>:deliveries, one per database (routing/__init__.py)
    # a message-log row still "received" this long after arriving was cut off by a crash: serve and
    # mllp process it again (gateway/ingest/replay.py), at start-up and every half of this
    "RECOVER_AFTER_SECONDS": 30,
    "MLLP_PORT": 0,  # 0 = MLLP listener not started by `serve`
    "DEFAULT_PAGE_SIZE": 50,
    # signs search paging cursors
    # (empty: the deployment's random key, kept in the database and so shared by all its processes)
    "SEARCH_CURSOR_SECRET": "",
    "MAX_PAGE_SIZE": 1000,
    # our own identity in MSH-3/MSH-4 of ACKs
    "ACK_SENDING_APPLICATION": "LECHENG_GW",
    "ACK_SENDING_FACILITY": "HAINAN_EPC",
    # --- security (gateway/security, README "Security")
    # "production": no demo client is made or printed, and serve may bind beyond loopback
    "ENVIRONMENT": "development",
    # clients and signing keys live in the database; a file an earlier release kept them in is imported
    # once into the empty table (empty = <DATA_DIR>/clients.json, <DATA_DIR>/signing-keys.json)
    "CLIENTS_FILE": "",
    "SIGNING_KEYS_FILE": "",
    "TOKEN_ISSUER": "",             # iss/aud of access tokens; empty = BASE_URL, else urn:lecheng-fhir-gateway
    "TOKEN_LIFETIME_SECONDS": 300,
    "RATE_LIMIT": "6000 per minute",        # per client (per source address without a token)
    "TOKEN_RATE_LIMIT": "60 per minute",    # token requests per source address
    "MAX_JSON_DEPTH": 100,                  # JSON bodies nested deeper are refused (400)
    # MLLP over TLS with client certificates (bound to clients by certificate subject CN)
    "MLLP_TLS_CERT": "",
    "MLLP_TLS_KEY": "",
    "MLLP_TLS_CLIENT_CA": "",
    # --- operations (gateway/observability.py)
    # a bearer secret that lets a Prometheus scraper read /metrics and nothing else (admin tokens work too)
    "METRICS_TOKEN": "",
    "LOG_FORMAT": "text",           # "json": one JSON object per log line, with the message-log id
}

_INT_KEYS = {k for k, v in DEFAULTS.items() if isinstance(v, int)}


def load_config(overrides: Mapping[str, Any] | None = None, *, toml_path: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Merge defaults < TOML file (``GATEWAY_CONFIG`` or ``toml_path``) < ``GATEWAY_*`` env < ``overrides``."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    path = toml_path or environ.get("GATEWAY_CONFIG")
    if path:
        with open(path, "rb") as fh:
            config.update({k.upper(): v for k, v in tomllib.load(fh).items()})
    for key in DEFAULTS:
        env_value = environ.get(f"GATEWAY_{key}")
        if env_value is not None:
            config[key] = int(env_value) if key in _INT_KEYS else env_value
    if overrides:
        config.update({k.upper(): v for k, v in overrides.items()})
    # absolute once, here: every later user (send_file resolves relative paths against the Flask app
    # root, open() against the working directory) then means the same directory
    config["DATA_DIR"] = os.path.abspath(os.path.expanduser(str(config["DATA_DIR"])))
    if config.get("EXPORT_DIR"):
        config["EXPORT_DIR"] = os.path.abspath(os.path.expanduser(str(config["EXPORT_DIR"])))
    if not config["DATABASE_URL"]:
        data_dir = Path(config["DATA_DIR"])
        config["DATABASE_URL"] = f"sqlite:///{(data_dir / 'gateway.db').as_posix()}"
    return config
