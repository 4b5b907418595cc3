"""The PS shard service: the ParameterShard gRPC API and the native TCP data path over one store."""
