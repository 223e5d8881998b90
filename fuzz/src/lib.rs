//! The fuzz targets' library: the checks each target applies to one input ([`checks`]).

pub mod checks;
