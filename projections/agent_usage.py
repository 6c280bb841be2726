"""How many conversations use each agent: the marketplace's popularity.

One row per agent a conversation names (`ConversationStarted.agent`: a system agent's
name, or an agent's id): the number of conversations started with it and when the
latest was. Trial conversations (`POST /v1/agents/{id}/try`) are not counted. The
marketplace (http/agents.py) joins these counts with the agents' catalog.
"""

from collections.abc import Sequence
from typing import ClassVar

from eventsourcing.utils import get_topic

from threadlog.domain.agent import TRIAL_METADATA
from threadlog.domain.events import ConversationStarted
from threadlog.projections.runner import Applied, ReadModel
from threadlog.projections.views import Sql, ViewSchema, to_micros


class AgentUsage(ReadModel):
    name = "agent_usage"
    schema = ViewSchema(
        tables=("agent_usage",),
        statements=(
            "CREATE TABLE IF NOT EXISTS agent_usage ("
            "agent TEXT PRIMARY KEY, conversations BIGINT NOT NULL, "
            "last_started_at BIGINT NOT NULL)",
        ),
    )
    topics: ClassVar[frozenset[str]] = frozenset({get_topic(ConversationStarted)})

    def apply(self, sql: Sql, events: Sequence[Applied], latest: Sequence[Applied]) -> None:
        counts: dict[str, list[int]] = {}
        for item in events:
            event = item.event
            if not isinstance(event, ConversationStarted):
                continue
            if event.metadata.get(TRIAL_METADATA) is True:
                continue
            count = counts.setdefault(event.agent, [0, 0])
            count[0] += 1
            count[1] = max(count[1], to_micros(event.timestamp))
        for agent, (conversations, last) in counts.items():
            sql.execute(
                "INSERT INTO agent_usage (agent, conversations, last_started_at) "
                "VALUES (?, ?, ?) ON CONFLICT (agent) DO UPDATE SET "
                "conversations = agent_usage.conversations + excluded.conversations, "
                "last_started_at = CASE WHEN excluded.last_started_at > "
                "agent_usage.last_started_at THEN excluded.last_started_at "
                "ELSE agent_usage.last_started_at END",
                (agent, conversations, last),
            )


def usage_counts(sql: Sql, agents: Sequence[str]) -> dict[str, int]:
    """Conversations per agent reference, for those given (0 when none)."""
    counts = dict.fromkeys(agents, 0)
    if not agents:
        return counts
    sql.execute("SELECT agent, conversations FROM agent_usage")
    for row in sql.fetchall():
        if row["agent"] in counts:
            counts[row["agent"]] = int(row["conversations"])
    return counts
