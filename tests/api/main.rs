//! Integration tests: the relay's handler against moto, the DealMachine simulator and a
//! webhook receiver. Run with `make test`, which starts moto.

mod at_least_once;
mod batch;
mod contract;
mod copy;
mod credentials;
mod delivery;
mod hardening;
mod helpers;
mod http2;
mod outcomes;
mod poll;
mod redrive;
mod replay;
mod resume;
mod retry;
mod s3_proxy;
mod schedule;
mod sweep;
mod timing;
mod webhook;
