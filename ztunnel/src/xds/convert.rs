//! xDS `istio.workload.Address` resources to the proxy's own [`state`](crate::state) types,
//! checking what the proxy relies on: addresses of 4 or 16 bytes, ports that fit, a uid.
use std::net::IpAddr;

use prost::Message;
use weft_api::{discovery::DeltaDiscoveryResponse, workload as api};

use crate::state::{Address, PortMapping, Service, TunnelProtocol, Update, Workload};

/// The update a response describes, or why it cannot be applied.
pub fn update(response: &DeltaDiscoveryResponse) -> Result<Update, String> {
    let mut update = Update { changed: Vec::new(), removed: response.removed_resources.clone() };
    for resource in &response.resources {
        let name = &resource.name;
        let body = resource.resource.as_ref().ok_or_else(|| format!("{name}: no resource body"))?;
        if body.type_url != api::ADDRESS_TYPE {
            return Err(format!("{name}: body of type {}", body.type_url));
        }
        let address =
            api::Address::decode(body.value.as_slice()).map_err(|error| format!("{name}: {error}"))?;
        let address = match address.r#type {
            Some(api::address::Type::Workload(workload)) => Address::Workload(self::workload(workload)?),
            Some(api::address::Type::Service(service)) => Address::Service(self::service(service)?),
            None => return Err(format!("{name}: neither workload nor service")),
        };
        update.changed.push((name.clone(), resource.version.clone(), address));
    }
    Ok(update)
}

fn workload(workload: api::Workload) -> Result<Workload, String> {
    if workload.uid.is_empty() {
        return Err(format!("workload {}/{} has no uid", workload.namespace, workload.name));
    }
    let protocol = match api::TunnelProtocol::try_from(workload.tunnel_protocol) {
        Ok(api::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
        Ok(api::TunnelProtocol::None) => TunnelProtocol::None,
        Err(_) => {
            return Err(format!(
                "workload {}: unknown tunnel protocol {}",
                workload.uid, workload.tunnel_protocol
            ));
        }
    };
    let addresses = workload
        .addresses
        .iter()
        .map(|bytes| ip(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("workload {}: {error}", workload.uid))?;
    let services = workload
        .services
        .into_iter()
        .map(|(key, ports)| {
            let ports = ports.ports.iter().map(port_mapping).collect::<Result<Vec<_>, _>>()?;
            Ok((key, ports))
        })
        .collect::<Result<_, String>>()
        .map_err(|error| format!("workload {}: {error}", workload.uid))?;
    let healthy = workload.status == i32::from(api::WorkloadStatus::Healthy);
    Ok(Workload {
        service_account: if workload.service_account.is_empty() {
            "default".into()
        } else {
            workload.service_account
        },
        uid: workload.uid,
        name: workload.name,
        namespace: workload.namespace,
        addresses,
        node: workload.node,
        protocol,
        services,
        healthy,
    })
}

fn service(service: api::Service) -> Result<Service, String> {
    let key = format!("{}/{}", service.namespace, service.hostname);
    let vips = service
        .addresses
        .iter()
        .map(|address| ip(&address.address))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("service {key}: {error}"))?;
    let ports = service
        .ports
        .iter()
        .map(|port| {
            u16::try_from(port.service_port).map_err(|_| format!("service {key}: port {}", port.service_port))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Service { name: service.name, namespace: service.namespace, hostname: service.hostname, vips, ports })
}

fn port_mapping(port: &api::Port) -> Result<PortMapping, String> {
    let service_port = u16::try_from(port.service_port).map_err(|_| format!("port {}", port.service_port))?;
    let target_port = match port.target_port {
        0 => service_port,
        target => u16::try_from(target).map_err(|_| format!("target port {target}"))?,
    };
    Ok(PortMapping { service_port, target_port })
}

fn ip(bytes: &[u8]) -> Result<IpAddr, String> {
    match bytes.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(bytes).map_err(|_| "address")?)),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(bytes).map_err(|_| "address")?)),
        len => Err(format!("an address of {len} bytes")),
    }
}

#[cfg(test)]
mod tests {
    use weft_api::discovery::Resource;

    use super::*;

    fn response(address: api::Address) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            resources: vec![Resource {
                name: "x".into(),
                version: "1".into(),
                resource: Some(prost_types::Any {
                    type_url: api::ADDRESS_TYPE.into(),
                    value: address.encode_to_vec(),
                }),
                aliases: vec![],
            }],
            ..Default::default()
        }
    }

    fn workload(addresses: Vec<Vec<u8>>) -> api::Address {
        api::Address {
            r#type: Some(api::address::Type::Workload(api::Workload {
                uid: "u".into(),
                addresses,
                tunnel_protocol: api::TunnelProtocol::Hbone.into(),
                services: [(
                    "ns/web".to_owned(),
                    api::PortList { ports: vec![api::Port { service_port: 80, target_port: 0 }] },
                )]
                .into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn converts_a_workload_with_defaults_filled_in() {
        let update = update(&response(workload(vec![vec![10, 0, 0, 1], vec![0; 16]]))).unwrap();
        let Address::Workload(converted) = &update.changed[0].2 else { panic!("not a workload") };
        assert_eq!(converted.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "::".parse().unwrap()]);
        assert_eq!(converted.service_account, "default");
        assert_eq!(converted.services["ns/web"], vec![PortMapping { service_port: 80, target_port: 80 }]);
        assert!(converted.healthy);
    }

    #[test]
    fn malformed_resources_are_refused_with_a_reason() {
        let error = update(&response(workload(vec![vec![10, 0, 0]]))).unwrap_err();
        assert!(error.contains("3 bytes"), "{error}");
        let mut garbage = response(workload(vec![]));
        garbage.resources[0].resource.as_mut().unwrap().value = vec![0xff, 0xff, 0xff];
        assert!(update(&garbage).is_err());
        let mut no_uid = workload(vec![]);
        if let Some(api::address::Type::Workload(workload)) = &mut no_uid.r#type {
            workload.uid.clear();
        }
        assert!(update(&response(no_uid)).unwrap_err().contains("no uid"));
        let mut bad_protocol = workload(vec![]);
        if let Some(api::address::Type::Workload(workload)) = &mut bad_protocol.r#type {
            workload.tunnel_protocol = 7;
        }
        assert!(update(&response(bad_protocol)).is_err());
    }
}
