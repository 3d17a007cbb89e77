"""Cluster mode: many nodes sharing NATS JetStream (the log) and etcd (ownership)."""
