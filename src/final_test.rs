//! The test split, evaluated once at the end of a run with the best validation epoch's weights
//! (streamed: it is read once): `test_metrics.json` and `test_predictions.parquet` in the run
//! folder. Beside the loss's own decision rule, the test is also decided by per-class
//! thresholds tuned on the validation split with the same weights (lossbench_core::thresholds).

use anyhow::Result;

use crate::checkpoint;
use crate::data::Source;
use crate::run::Run;
use crate::stop::Stop;
use lossbench_core::records::{self, TestOutcome, Tuned};

/// Evaluates the test split; `None` when a stop was requested during it (the resumed attempt
/// tests again).
pub fn test(run: &mut Run, stop: &Stop) -> Result<Option<TestOutcome>> {
    let best = checkpoint::at_epoch(&run.dir, run.progress.best_epoch)
        .and_then(|best| run.net.restore(&best.model, &best.dir));
    run.dist.agree(best)?;
    let split = run.data.test.clone();
    let evaluator = crate::train::evaluator(run, "testing".into());
    let Some(e) =
        evaluator.evaluate(&Source::Stream(split.clone()), true, &|| stop.requested(0))?
    else {
        return Ok(None);
    };
    // Test labels and pixels must come from the store the run trained on.
    run.dist.agree(run.store.check_unchanged())?;
    let Some(tuned) = tuned(run, &e.logits, &split.labels, stop)? else {
        return Ok(None);
    };
    let outcome = TestOutcome {
        best_epoch: run.progress.best_epoch,
        loss: e.loss,
        metrics: e.counts.metrics(),
        ranking: Some(e.ranking(&split)),
        tuned: Some(tuned),
    };
    let written = match run.dist.is_root() {
        true => write_results(run, &split, &e, &outcome),
        false => Ok(()),
    };
    run.dist.agree(written)?;
    Ok(Some(outcome))
}

/// Rank 0 writes the test predictions and `test_metrics.json`.
fn write_results(
    run: &Run,
    split: &lossbench_core::store::SplitData,
    e: &crate::eval::Evaluation,
    outcome: &TestOutcome,
) -> Result<()> {
    run.lock_held()?;
    let predictions = run.dir.join(lossbench_core::predictions::FILE);
    lossbench_core::predictions::write(
        &predictions,
        &split.names,
        &split.labels,
        &e.logits,
        &e.decisions,
    )?;
    let json = serde_json::to_vec_pretty(outcome)?;
    lossbench_core::files::write_atomically(&run.dir.join(records::TEST_FILE), &json)
}

/// The test scores decided by per-class thresholds tuned on the validation split (evaluated
/// again with the tested weights); `None` when a stop was requested meanwhile.
fn tuned(run: &Run, test: &[f32], truth: &[u8], stop: &Stop) -> Result<Option<Tuned>> {
    let evaluator = crate::train::evaluator(run, "tuning thresholds on validation".into());
    let Some(val) = evaluator.evaluate(&run.data.val, false, &|| stop.requested(0))? else {
        return Ok(None);
    };
    let thresholds = crate::thresholds::tune(&val.logits, &run.data.val.split().labels);
    let metrics = crate::thresholds::metrics(test, truth, &thresholds);
    let thresholds = thresholds
        .into_iter()
        .map(|t| t.is_finite().then_some(t))
        .collect();
    Ok(Some(Tuned {
        thresholds,
        metrics,
    }))
}
