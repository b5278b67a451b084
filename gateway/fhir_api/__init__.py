"""The FHIR R4 REST API under ``/fhir``: metadata, read, vread, history, search, $validate."""
from gateway.fhir_api.views import fhir_blueprint

__all__ = ["fhir_blueprint"]
