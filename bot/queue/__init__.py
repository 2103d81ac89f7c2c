"""The Redis Streams queue between adapters and engine workers.

Adapter side: :class:`ParleyClient` submits requests to ``parley:req:{shard}`` and streams
back reply events from its own ``parley:out:{adapter}``. Engine side: :class:`RequestConsumer`
reads shards as a member of the engines' consumer group (reclaiming what dead workers left,
dead-lettering what cannot be served) and :class:`ReplyWriter` writes reply events, log
entries and acknowledgements in one transaction per batch. :class:`ShardLeases` spreads the
shards over the live workers.
"""

from bot.queue.client import BUSY_MESSAGE, UNAVAILABLE_MESSAGE, ParleyClient
from bot.queue.consumer import RequestConsumer
from bot.queue.items import Delivery, Outgoing
from bot.queue.leases import ShardLeases, assign
from bot.queue.tasks import cancel_and_wait
from bot.queue.writer import ReplyWriter

__all__ = [
    "BUSY_MESSAGE",
    "UNAVAILABLE_MESSAGE",
    "Delivery",
    "Outgoing",
    "ParleyClient",
    "ReplyWriter",
    "RequestConsumer",
    "ShardLeases",
    "assign",
    "cancel_and_wait",
]
