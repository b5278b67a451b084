"""The gateway's parts wired together once from configuration; shared by the web app, MLLP and CLI."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.ingest.documents import DocumentPipeline
from gateway.ingest.messagelog import MessageLog
from gateway.ingest.pipeline import Hl7Pipeline
from gateway.mapping.engine import MappingSet
from gateway.mapping.terminology import Terminology
from gateway.routing import Outbox, Router, Routes, load_routes
from gateway.store import ResourceStore, SearchParameterRegistry, make_engine
from gateway.security.shared_secrets import shared_secret
from gateway.validation import ProfileRegistry, Validator


def parse_strictness(text: str) -> dict[str, str]:
    """``"url=warning,url2=error"`` -> {url: level}."""
    pairs = (item.split("=", 1) for item in str(text or "").split(",") if "=" in item)
    return {url.strip(): level.strip() for url, level in pairs}


@dataclass
class Gateway:
    config: dict
    zone: ZoneInfo | None
    store: ResourceStore
    message_log: MessageLog
    mappings: MappingSet
    terminology: Terminology
    validator: Validator
    pipeline: Hl7Pipeline
    routes: Routes
    router: Router        # its on_stored is every pipeline's hook: outbox rows in the store's transaction
    outbox: Outbox
    documents: DocumentPipeline | None = None    # hospitals' XML/CSV/JSON exports, through pipeline's store step

    @classmethod
    def from_config(cls, config: dict) -> "Gateway":
        engine = make_engine(config["DATABASE_URL"], config["SCHEMA_UPGRADE"])
        zone = ZoneInfo(config["TIMEZONE"]) if config["TIMEZONE"] else None
        store = ResourceStore(engine, SearchParameterRegistry.load(), zone,
                              cursor_secret=config.get("SEARCH_CURSOR_SECRET")
                              or shared_secret(engine, "search-cursor", Path(config["DATA_DIR"]) / "search-cursor.key"))
        message_log = MessageLog(engine)
        mappings = MappingSet.load(config["MAPPINGS_DIR"])
        terminology = Terminology.load(config["MAPPINGS_DIR"])
        validator = Validator(ProfileRegistry.load(config["PROFILES_DIR"]),
                              strictness=parse_strictness(config["PROFILE_STRICTNESS"]))
        routes = load_routes(config["ROUTES_FILE"])        # RoutesError (file:line) stops start-up
        router = Router(routes)
        pipeline = Hl7Pipeline(config, store, message_log, mappings, terminology, validator, zone,
                               on_stored=router.on_stored)
        gateway = cls(config, zone, store, message_log, mappings, terminology, validator, pipeline,
                      routes, router, Outbox(engine))
        gateway.documents = DocumentPipeline(config, message_log, mappings, terminology, zone, pipeline)
        return gateway
