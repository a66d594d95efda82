//! Integration tests: the relay's handler against moto, the DealMachine simulator and a
//! webhook receiver. Run with `make test`, which starts moto.

mod batch;
mod copy;
mod delivery;
mod hardening;
mod helpers;
mod outcomes;
mod poll;
mod resume;
mod s3_proxy;
mod schedule;
mod sweep;
mod timing;
mod webhook;
