//! sensor-rpc: an example of a team's own service on deploy-kit, outside the
//! kit-service package. One trait declares the protocol `sensor.Sensors.v1`;
//! it shows struct parameters and results ([`Reading`], [`Summary`]), lists,
//! nullable values, a producer stream, an exchange stream, and a binary
//! result large enough to travel through external storage as a pointer.

use kit_service::{ArrowRecord, Ctx, Exchange, Produce, RowExchanger, RowProducer, Rows, RpcError};
use serde::{Deserialize, Serialize};

/// Largest `export` result, so a caller cannot make one call allocate without bound.
pub const MAX_EXPORT_BYTES: i64 = 64 << 20;

/// One measurement.
#[derive(ArrowRecord, Debug, Clone, PartialEq)]
pub struct Reading {
    /// The sensor's id.
    pub sensor: String,
    /// Degrees Celsius.
    pub celsius: f64,
    /// A free-form remark, when there is one.
    pub note: Option<String>,
}

/// What `summarize` returns.
#[derive(ArrowRecord, Debug, Clone, PartialEq)]
pub struct Summary {
    /// How many values were given.
    pub count: i64,
    /// Their mean; null when there were none.
    pub mean: Option<f64>,
    /// The smallest value; null when there were none.
    pub min: Option<f64>,
    /// The largest value; null when there were none.
    pub max: Option<f64>,
}

/// `sensor.Sensors.v1`.
#[kit_service::service(name = "sensor.Sensors.v1", version = "1.0.0")]
pub trait Sensors {
    /// Count, mean, min and max of `values`.
    async fn summarize(&self, values: Vec<f64>) -> Result<Summary, RpcError>;

    /// `reading` shifted by `offset` degrees, with a note saying so.
    async fn calibrate(&self, reading: Reading, offset: f64) -> Result<Reading, RpcError>;

    /// `count` synthetic readings of `sensor`, `batch_rows` per batch.
    async fn history(
        &self,
        sensor: String,
        count: i64,
        batch_rows: i64,
    ) -> Result<Produce<History>, RpcError>;

    /// Converts each batch of readings it is sent to Fahrenheit.
    async fn fahrenheit(&self) -> Result<Exchange<Fahrenheit>, RpcError>;

    /// `bytes` bytes of a deterministic export of `sensor` (a large result:
    /// above the externalize threshold it is sent as a pointer URL).
    async fn export(&self, ctx: &Ctx, sensor: String, bytes: i64) -> Result<Vec<u8>, RpcError>;
}

/// `history`'s state between turns.
#[derive(Serialize, Deserialize)]
pub struct History {
    sensor: String,
    next: i64,
    count: i64,
    batch_rows: i64,
}

/// The synthetic temperature of reading `index`.
pub fn synthetic_celsius(index: i64) -> f64 {
    20.0 + (index % 10) as f64 * 0.5
}

impl RowProducer for History {
    type Row = Reading;

    async fn produce(&mut self, out: &mut Rows<'_, Reading>, _ctx: &Ctx) -> Result<(), RpcError> {
        let stop = (self.next + self.batch_rows).min(self.count);
        let rows = (self.next..stop)
            .map(|index| Reading {
                sensor: self.sensor.clone(),
                celsius: synthetic_celsius(index),
                note: (index % 3 == 0).then(|| format!("sample {index}")),
            })
            .collect();
        out.emit(rows)?;
        self.next = stop;
        if self.next >= self.count {
            out.finish();
        }
        Ok(())
    }
}

/// `fahrenheit`'s state: how many readings it converted so far.
#[derive(Serialize, Deserialize)]
pub struct Fahrenheit {
    converted: u64,
}

impl RowExchanger for Fahrenheit {
    type Input = Reading;
    type Row = Reading;

    async fn exchange(
        &mut self,
        input: Vec<Reading>,
        out: &mut Rows<'_, Reading>,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        self.converted += input.len() as u64;
        out.emit(
            input
                .into_iter()
                .map(|reading| Reading {
                    celsius: reading.celsius * 9.0 / 5.0 + 32.0,
                    ..reading
                })
                .collect(),
        )
    }
}

/// The example's implementation.
pub struct SensorService;

/// Byte `index` of `sensor`'s export: a pattern a client can check.
pub fn export_byte(sensor: &str, index: usize) -> u8 {
    let seed = sensor.bytes().fold(0u8, u8::wrapping_add);
    (index as u8).wrapping_mul(31).wrapping_add(seed)
}

impl Sensors for SensorService {
    async fn summarize(&self, values: Vec<f64>) -> Result<Summary, RpcError> {
        let count = values.len() as i64;
        let min = values.iter().copied().reduce(f64::min);
        let max = values.iter().copied().reduce(f64::max);
        let mean = (count > 0).then(|| values.iter().sum::<f64>() / count as f64);
        Ok(Summary {
            count,
            mean,
            min,
            max,
        })
    }

    async fn calibrate(&self, reading: Reading, offset: f64) -> Result<Reading, RpcError> {
        Ok(Reading {
            celsius: reading.celsius + offset,
            note: Some(format!("calibrated by {offset:+}")),
            ..reading
        })
    }

    async fn history(
        &self,
        sensor: String,
        count: i64,
        batch_rows: i64,
    ) -> Result<Produce<History>, RpcError> {
        if !(0..=10_000_000).contains(&count) || !(1..=100_000).contains(&batch_rows) {
            return Err(RpcError::value(
                "count must be within 0..=10000000 and batch_rows within 1..=100000",
            ));
        }
        Ok(Produce::new(History {
            sensor,
            next: 0,
            count,
            batch_rows,
        }))
    }

    async fn fahrenheit(&self) -> Result<Exchange<Fahrenheit>, RpcError> {
        Ok(Exchange::new(Fahrenheit { converted: 0 }))
    }

    async fn export(&self, ctx: &Ctx, sensor: String, bytes: i64) -> Result<Vec<u8>, RpcError> {
        if !(0..=MAX_EXPORT_BYTES).contains(&bytes) {
            return Err(RpcError::value(format!(
                "bytes must be within 0..={MAX_EXPORT_BYTES}"
            )));
        }
        ctx.log(
            kit_service::LogLevel::Info,
            format!("exporting {bytes} bytes of {sensor}"),
        );
        Ok((0..bytes as usize)
            .map(|index| export_byte(&sensor, index))
            .collect())
    }
}

fn main() -> std::process::ExitCode {
    kit_service::host::main([SensorService.into_protocol()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kit_service::testing::TestServer;

    async fn client() -> (TestServer, SensorsClient) {
        let server = TestServer::start([SensorService.into_protocol()]).await;
        let client = SensorsClient::new(server.client().clone());
        (server, client)
    }

    #[tokio::test]
    async fn summarize_handles_empty_and_full_lists() {
        let (_server, client) = client().await;
        let summary = client.summarize(vec![1.0, 2.0, 6.0]).await.unwrap();
        assert_eq!(
            summary,
            Summary {
                count: 3,
                mean: Some(3.0),
                min: Some(1.0),
                max: Some(6.0)
            }
        );
        let empty = client.summarize(Vec::new()).await.unwrap();
        assert_eq!((empty.count, empty.mean), (0, None));
    }

    #[tokio::test]
    async fn calibrate_round_trips_a_struct() {
        let (_server, client) = client().await;
        let reading = Reading {
            sensor: "t1".into(),
            celsius: 20.0,
            note: None,
        };
        let calibrated = client.calibrate(reading, -0.5).await.unwrap();
        assert_eq!(calibrated.celsius, 19.5);
        assert_eq!(calibrated.note.as_deref(), Some("calibrated by -0.5"));
    }

    #[tokio::test]
    async fn history_streams_every_reading() {
        let (_server, client) = client().await;
        let readings = client
            .history("t1".into(), 25, 10)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(readings.len(), 25);
        assert_eq!(readings[24].celsius, synthetic_celsius(24));
        assert_eq!(readings[3].note.as_deref(), Some("sample 3"));
    }

    #[tokio::test]
    async fn fahrenheit_converts_each_batch_it_is_sent() {
        let (_server, client) = client().await;
        let mut exchange = client.fahrenheit().await.unwrap();
        let reading = |celsius| Reading {
            sensor: "t1".into(),
            celsius,
            note: None,
        };
        let first = exchange
            .exchange(vec![reading(0.0), reading(100.0)])
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|r| r.celsius).collect::<Vec<_>>(),
            [32.0, 212.0]
        );
        let second = exchange.exchange(vec![reading(-40.0)]).await.unwrap();
        assert_eq!(second[0].celsius, -40.0);
        exchange.close().await.unwrap();
    }

    #[tokio::test]
    async fn export_beyond_the_threshold_travels_as_a_pointer() {
        let server = TestServer::start_with_storage([SensorService.into_protocol()], 1 << 20).await;
        let client = SensorsClient::new(server.client().clone());
        let bytes = client.export("t1".into(), 3 << 20).await.unwrap();
        assert_eq!(bytes.len(), 3 << 20);
        assert!(
            bytes
                .iter()
                .enumerate()
                .all(|(index, byte)| *byte == export_byte("t1", index))
        );
    }
}
