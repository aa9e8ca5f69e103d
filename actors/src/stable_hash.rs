//! One stable hash for everything that must map a name to the same place on every node
//! and in every release: a record key to its partition, a consumer group to its offsets
//! partition (and so to its coordinator), a topic name to the rotation of its replica
//! placement. It is defined in `psubd-wire` ([`psubd_wire::partitioning`]), so clients
//! that choose a record's partition themselves use the very same function.

pub use psubd_wire::partitioning::fnv1a;
