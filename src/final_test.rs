//! The test split, evaluated once at the end of a run with the best validation epoch's weights
//! (streamed: it is read once): `test_metrics.json` and `test_predictions.parquet` in the run
//! folder.

use anyhow::Result;

use crate::checkpoint;
use crate::data::Source;
use crate::run::Run;
use crate::stop::Stop;
use lossbench_core::records::{self, TestOutcome};

/// Evaluates the test split; `None` when a stop was requested during it (the resumed attempt
/// tests again).
pub fn test(run: &mut Run, stop: &Stop) -> Result<Option<TestOutcome>> {
    let best = checkpoint::at_epoch(&run.dir, run.progress.best_epoch)?;
    run.net.restore(&best.model, &best.dir)?;
    let split = run.data.test.clone();
    let evaluator = crate::train::evaluator(run, "testing".into());
    let Some(e) =
        evaluator.evaluate(&Source::Stream(split.clone()), true, &|| stop.requested(0))?
    else {
        return Ok(None);
    };
    // Test labels and pixels must come from the store the run trained on.
    run.store.check_unchanged()?;
    let outcome = TestOutcome {
        best_epoch: run.progress.best_epoch,
        loss: e.loss,
        metrics: e.counts.metrics(),
    };
    if !run.dist.is_root() {
        return Ok(Some(outcome));
    }
    let predictions = run.dir.join(lossbench_core::predictions::FILE);
    lossbench_core::predictions::write(
        &predictions,
        &split.names,
        &split.labels,
        &e.logits,
        &e.decisions,
    )?;
    let json = serde_json::to_vec_pretty(&outcome)?;
    lossbench_core::files::write_atomically(&run.dir.join(records::TEST_FILE), &json)?;
    Ok(Some(outcome))
}
