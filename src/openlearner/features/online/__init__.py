"""Online stores: the latest feature values per entity, for serving."""

from openlearner.features.online.base import OnlineStore, encode_key, open_online_store
from openlearner.features.online.redis import RedisOnlineStore
from openlearner.features.online.sqlite import SQLiteOnlineStore

__all__ = ["OnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "encode_key", "open_online_store"]
