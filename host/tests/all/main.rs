//! Integration tests of the host against the real guests in `guests/`.

mod util;
mod smoke;
