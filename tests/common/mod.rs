//! Shared test code. Each test binary that says `mod common;` compiles this module anew and uses
//! only some of it, hence the allowance.
#![allow(dead_code)]

pub mod ops_suite;
