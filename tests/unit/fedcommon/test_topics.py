from __future__ import annotations

from fedcommon import topics
from fedcommon.messages import v1


def test_every_topic_goes_through_the_prefix_and_names_are_unique() -> None:
    names = topics.all_topic_names("tenant-a.")

    assert len(names) == len(set(names)) == len(topics.TOPICS)
    assert all(name.startswith("tenant-a.fed.") for name in names)


def test_every_carried_type_is_a_real_message_type() -> None:
    known = {t.model_fields["type"].default for t in v1.ALL_MESSAGE_TYPES}

    carried = {name for spec in topics.TOPICS for name in spec.carries}

    assert carried <= known
    assert known - carried == set()
