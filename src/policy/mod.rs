//! The pure core: every decision about an agent (start or queue, what an exit means, when a
//! timeout fires, what a kill does) is a function of (state, input, now) returning the new
//! state and the actions to carry out. Nothing in here reads a clock, a file or a process.

pub mod agent;
pub mod lifecycle;

#[cfg(test)]
mod tests;
