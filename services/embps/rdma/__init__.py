"""The RDMA data path (PetPS-style lookups with NIC gathering), one module per job.

    discovery   which verbs devices exist, whether a process uses RDMA, and why not
    exchange    the memcached rendezvous where shard and client swap queue-pair endpoints
    wire        the request and error records that travel over the queue pair
    planner     the chain of RDMA WRITEs that answers a lookup, pure of verbs (no hardware needed)
    config      the shard's and the client's settings
    verbs       the pyverbs calls both sides make (device, memory regions, queue pairs)
    server      the shard side: accepts clients, serves lookups straight from the PM pool
    client      the client side: one queue pair to one shard

Nothing here imports pyverbs until verbs are used, so the package imports without it.
"""
