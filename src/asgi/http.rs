//! One HTTP request on the loop: `receive`, `send`, and their awaitables.
