//! tuner: a fair loss comparison (docs/tuning.md). Every loss is tuned with the same budget by
//! asynchronous successive halving over ordinary lossbench runs ([`asha`], [`plan`]), its
//! parameters drawn at random or by TPE ([`sampler`], [`space`]); workers share one study folder
//! without a database ([`worker`]): each trial's state is a file written atomically beside its
//! run folder (`lossbench_core::trial`), decisions are made under the study's lock in trial
//! order, so the outcome is the same for any number of workers, killed or not. Then each loss's
//! best configuration and its defaults are trained and tested over seeds.

pub mod asha;
pub mod plan;
pub mod sampler;
pub mod space;
pub mod study;
pub mod worker;
