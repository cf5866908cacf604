//! TCP on DPDK queues: frame classification, the smoltcp device view, and
//! each core's stack.

pub mod device;
pub mod flow;
pub mod link;
#[allow(unsafe_code)]
pub mod memory;
pub mod stack;
