pub mod cli;
pub mod diagnostic;
pub mod duration;
pub mod exit;
pub mod graph;
pub mod pipeline;
pub mod plan;
pub mod template;
