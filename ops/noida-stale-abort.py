#!/usr/bin/env python3
"""Shows a limit of the test broker (noida-db 0.2.3) that the Kafka crash tests work around.

Once a producer id has an aborted transaction, noida-db lists that transaction in every fetch response that starts
past its abort marker (Kafka lists only the aborted transactions that overlap the fetched range). A read_committed
consumer then skips every later record of that producer id: it waits for an abort marker that never comes. A
producer restarted with the same transactional.id keeps its producer id, so its later commits vanish for any
consumer that starts reading after the marker.

The script: producer 1 commits A, leaves B open; producer 2 (same transactional.id) fences it, which aborts B, and
commits C and D. It then reads the partition read_committed from every offset. On Kafka every start at or before
C's offset sees C and D; on noida-db 0.2.3 only the starts before B's abort marker do.

    bash ops/kafka-broker.sh start          # prints BOOTSTRAP=...
    python3 -m venv /tmp/probe && /tmp/probe/bin/pip install confluent-kafka==2.12.1
    /tmp/probe/bin/python ops/noida-stale-abort.py 127.0.0.1:19092
"""

import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def main(bootstrap: str) -> int:
    topic = "stale-abort-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    time.sleep(1)
    transactional_id = "stale-abort-" + uuid.uuid4().hex[:8]

    def producer() -> Producer:
        p = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id})
        p.init_transactions(10)
        return p

    first = producer()
    first.begin_transaction()
    first.produce(topic, value=b"A", partition=0)
    first.commit_transaction(10)
    first.begin_transaction()
    first.produce(topic, value=b"B", partition=0)
    first.flush(10)
    second = producer()  # fences the first: B is aborted
    for value in (b"C", b"D"):
        second.begin_transaction()
        second.produce(topic, value=value, partition=0)
        second.commit_transaction(10)

    def read(start: int, isolation: str) -> list:
        c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "stale-abort-" + uuid.uuid4().hex,
                "isolation.level": isolation,
                "enable.partition.eof": True,
            }
        )
        c.assign([TopicPartition(topic, 0, start)])
        seen = []
        while True:
            m = c.poll(10)
            if m is None:
                raise SystemExit(f"no end of partition within 10 s (start {start})")
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            seen.append((m.offset(), m.value().decode()))
        c.close()
        return seen

    everything = read(0, "read_uncommitted")
    print("read_uncommitted from 0:", everything)
    c_offset = next(o for o, v in everything if v == "C")
    wrong = 0
    for start in range(0, c_offset + 1):
        seen = read(start, "read_committed")
        values = [v for _, v in seen]
        ok = "C" in values and "D" in values and "B" not in values
        wrong += not ok
        print(f"read_committed from {start}: {seen}{'' if ok else '   <- C and D missing'}")
    print("broker OK" if wrong == 0 else f"broker lists a stale aborted transaction ({wrong} starts miss commits)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:19092"))
