pub mod analyze;
pub mod load;
pub mod model;
pub mod schema;
pub mod yaml;
