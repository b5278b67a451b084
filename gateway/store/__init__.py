"""Resource storage: versioned FHIR resources, declared search indexes, the inbound message log."""
from gateway.store.resources import (HistoryEntry, HistoryPage, ResourceGone, ResourceNotFound, ResourceStore, SearchCriterion, SearchPage,
                                     StoreError, StoreTransaction, VersionConflict, new_resource_id,
                                     now_instant)
from gateway.store.schema import make_engine
from gateway.store.search import SearchError
from gateway.store.search_parameters import SearchParameter, SearchParameterRegistry

__all__ = ["HistoryEntry", "HistoryPage", "ResourceStore", "StoreTransaction", "StoreError", "ResourceNotFound", "ResourceGone",
           "VersionConflict", "SearchCriterion", "SearchPage", "SearchError", "SearchParameter",
           "SearchParameterRegistry", "make_engine", "new_resource_id", "now_instant"]
