"""Fleet learning (issue 20): the fleet improves a shared adapter from seeds and scalars.

FedKSeed (Qin et al., ICML 2024) on P-RGE: each round shares a pool of K seeds; a device runs
its P-RGE steps with directions drawn from the pool and replies with one accumulated scalar
per seed and its example count; the server sums them weighted by count; every device rebuilds
the global adapter by replaying the seeds. Pure parts: pool.py, accumulate.py, replay.py,
messages.py, local.py; on Flower: client_app.py (the device), strategy.py and server_app.py
(the controller side), inprocess.py (a simulated fleet on Flower's message API).
"""
