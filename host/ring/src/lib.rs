//! Disruptor-style bounded ring buffers: the native messaging core of the
//! reactor host (inboxes, cross-shard rings, the network's hand-off into
//! shards).
