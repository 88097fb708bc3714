"""A dialer honouring the guard: bootstrap the current blocks, then follow them live.

python docs/examples/dialer.py 127.0.0.1:19092 fatigue.blocks.v1 cust-42
"""

import sys

from streams.sender import BlockFollower

bootstrap, topic, customer = sys.argv[1:4]
follower = BlockFollower(bootstrap, topic, channel="call", on_change=lambda key, decision: None)
follower.bootstrap()  # every block in force right now
follower.poll(1000)  # in a dialer: follower.follow() in a thread, or poll() in its loop
block = follower.blocked(customer, "call")
print("do not call" if block else "ok to call", block["reason"] if block else "", block["until"] if block else "")
follower.close()
