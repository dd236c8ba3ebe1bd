//! DTLS for every peer from one validated dimpl configuration.
//!
//! str0m's aws-lc-rs backend builds a dimpl `Config` for each new DTLS
//! instance, and building one validates the whole crypto provider (a key
//! exchange on every supported group and signature checks): ~11 M
//! instructions, about 85 % of a join's crypto. The configuration depends
//! only on the MTU, so this provider builds it once per MTU and shares it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use str0m::crypto::CryptoError;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};

/// A DTLS provider over dimpl (as str0m's aws-lc-rs backend) that shares one
/// validated configuration per MTU between all instances.
pub(crate) struct SharedConfigDtls {
    /// Makes certificates; the only part of the wrapped provider still used.
    certificates: &'static dyn DtlsProvider,
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl std::fmt::Debug for SharedConfigDtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfigDtls").finish_non_exhaustive()
    }
}

/// The process's shared-configuration provider; `certificates` makes the
/// certificates (the first caller's provider serves for the process).
pub(crate) fn shared(certificates: &'static dyn DtlsProvider) -> &'static SharedConfigDtls {
    static SHARED: OnceLock<SharedConfigDtls> = OnceLock::new();
    SHARED.get_or_init(|| SharedConfigDtls {
        certificates,
        configs: Mutex::new(Vec::new()),
    })
}

impl SharedConfigDtls {
    /// The configuration for `mtu`, built (and validated) on first use.
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(c.clone());
        }
        // As str0m's backend: ICE verifies return routability before DTLS,
        // which makes server cookies redundant.
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {e}")))?,
        );
        configs.push((mtu, config.clone()));
        Ok(config)
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.certificates.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            other => {
                return Err(CryptoError::Other(format!(
                    "unsupported DTLS version: {other}"
                )));
            }
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// One peer's DTLS: dimpl's, as str0m's backend wraps it.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_configuration_per_mtu_serves_every_instance() {
        let provider = str0m::crypto::from_feature_flags();
        let dtls = shared(provider.dtls_provider);
        let cert = dtls.generate_certificate().expect("a certificate");
        let now = Instant::now();
        for _ in 0..3 {
            for mtu in [None, Some(1200)] {
                dtls.new_dtls(&cert, now, DtlsVersion::Dtls12, mtu)
                    .expect("an instance");
            }
        }
        let configs = dtls.configs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mtus: Vec<_> = configs.iter().map(|(m, _)| *m).collect();
        mtus.sort();
        assert_eq!(mtus, [None, Some(1200)]);
        assert_eq!(
            configs
                .iter()
                .find(|(m, _)| m.is_some())
                .map(|(_, c)| c.mtu()),
            Some(1200)
        );
    }
}
