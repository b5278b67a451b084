"""The FHIR R4 REST API under ``/fhir``: metadata, read, vread, history, search, $validate."""
from gateway.fhir_api.views import fhir_blueprint
from gateway.fhir_api import search_view  # noqa: F401,E402  (registers search on the blueprint)

__all__ = ["fhir_blueprint"]
