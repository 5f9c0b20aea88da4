//! xDS `istio.workload.Address` and `istio.security.Authorization` resources to the proxy's own
//! [`state`](crate::state) and [`authz`](crate::authz) types, checking what the proxy relies on:
//! addresses of 4 or 16 bytes, prefix lengths and ports that fit, a uid, known enum values.
use std::net::IpAddr;

use prost::Message;
use weft_api::{discovery::DeltaDiscoveryResponse, security, workload as api};

use crate::{
    authz::{self, Action, Cidr, Policy, Scope, StringMatch},
    state::{
        Address, Locality, LocalityPreference, LocalityScope, NetworkIp, PortMapping, Service,
        TunnelProtocol, Update, Waypoint, WaypointAddress, Workload,
    },
};

/// The update a response describes, or why it cannot be applied.
pub fn update(response: &DeltaDiscoveryResponse) -> Result<Update, String> {
    decode_each(response, api::ADDRESS_TYPE, |name, address: api::Address| match address.r#type {
        Some(api::address::Type::Workload(workload)) => Ok(Address::Workload(self::workload(workload)?)),
        Some(api::address::Type::Service(service)) => Ok(Address::Service(self::service(service)?)),
        None => Err(format!("{name}: neither workload nor service")),
    })
}

/// The policy update a response describes, or why it cannot be applied.
pub fn policies(response: &DeltaDiscoveryResponse) -> Result<Update<Policy>, String> {
    decode_each(response, security::AUTHORIZATION_TYPE, |name, authorization| {
        policy(authorization).map_err(|error| format!("policy {name}: {error}"))
    })
}

/// Every resource of `response`, checked to be of `type_url`, decoded as `M` and converted;
/// the first failure names its resource.
fn decode_each<M: Message + Default, T>(
    response: &DeltaDiscoveryResponse,
    type_url: &str,
    convert: impl Fn(&str, M) -> Result<T, String>,
) -> Result<Update<T>, String> {
    let mut update = Update { changed: Vec::new(), removed: response.removed_resources.clone() };
    for resource in &response.resources {
        let name = &resource.name;
        let body = resource.resource.as_ref().ok_or_else(|| format!("{name}: no resource body"))?;
        if body.type_url != type_url {
            return Err(format!("{name}: body of type {}", body.type_url));
        }
        let message = M::decode(body.value.as_slice()).map_err(|error| format!("{name}: {error}"))?;
        update.changed.push((name.clone(), resource.version.clone(), convert(name, message)?));
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
        // A protocol of a newer control plane (Istio's LEGACY_ISTIO_MTLS, say) is no reason to
        // refuse the rest of the response; connections to that workload are refused instead of
        // sent in plaintext.
        Err(_) => {
            tracing::warn!(uid = %workload.uid, protocol = workload.tunnel_protocol,
                "unknown tunnel protocol: connections to the workload will be refused");
            TunnelProtocol::Unsupported
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
    let shared_address = match api::NetworkMode::try_from(workload.network_mode) {
        Ok(api::NetworkMode::Standard) => false,
        Ok(api::NetworkMode::HostNetwork) => true,
        Err(_) => {
            return Err(format!("workload {}: unknown network mode {}", workload.uid, workload.network_mode));
        }
    };
    let waypoint = workload
        .waypoint
        .map(waypoint)
        .transpose()
        .map_err(|error| format!("workload {}: {error}", workload.uid))?;
    Ok(Workload {
        waypoint,
        authorization_policies: workload.authorization_policies,
        service_account: if workload.service_account.is_empty() {
            "default".into()
        } else {
            workload.service_account
        },
        trust_domain: (!workload.trust_domain.is_empty()).then_some(workload.trust_domain),
        uid: workload.uid,
        network: workload.network,
        name: workload.name,
        namespace: workload.namespace,
        workload_name: workload.workload_name,
        addresses,
        node: workload.node,
        protocol,
        services,
        healthy,
        shared_address,
        locality: workload
            .locality
            .map(|locality| Locality {
                region: locality.region,
                zone: locality.zone,
                subzone: locality.subzone,
            })
            .unwrap_or_default(),
    })
}

fn policy(authorization: security::Authorization) -> Result<Policy, String> {
    let scope = match security::Scope::try_from(authorization.scope) {
        Ok(security::Scope::Global) => Scope::Global,
        Ok(security::Scope::Namespace) => Scope::Namespace,
        Ok(security::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => return Err(format!("unknown scope {}", authorization.scope)),
    };
    let action = match security::Action::try_from(authorization.action) {
        Ok(security::Action::Allow) => Action::Allow,
        Ok(security::Action::Deny) => Action::Deny,
        Err(_) => return Err(format!("unknown action {}", authorization.action)),
    };
    let groups = authorization
        .groups
        .into_iter()
        .map(|group| {
            group
                .rules
                .into_iter()
                .map(|rules| rules.matches.into_iter().map(policy_match).collect::<Result<authz::Rule, _>>())
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        name: authorization.name,
        namespace: authorization.namespace,
        scope,
        action,
        groups,
        dry_run: authorization.dry_run,
    })
}

fn policy_match(one: security::Match) -> Result<authz::Match, String> {
    let strings =
        |list: Vec<security::StringMatch>| list.into_iter().map(string_match).collect::<Result<Vec<_>, _>>();
    let cidrs = |list: Vec<security::Address>| list.iter().map(cidr).collect::<Result<Vec<_>, _>>();
    let ports = |list: Vec<u32>| {
        list.into_iter()
            .map(|port| u16::try_from(port).map_err(|_| format!("port {port}")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(authz::Match {
        namespaces: strings(one.namespaces)?,
        not_namespaces: strings(one.not_namespaces)?,
        principals: strings(one.principals)?,
        not_principals: strings(one.not_principals)?,
        source_ips: cidrs(one.source_ips)?,
        not_source_ips: cidrs(one.not_source_ips)?,
        destination_ips: cidrs(one.destination_ips)?,
        not_destination_ips: cidrs(one.not_destination_ips)?,
        destination_ports: ports(one.destination_ports)?,
        not_destination_ports: ports(one.not_destination_ports)?,
        service_accounts: one.service_accounts.into_iter().map(service_account).collect(),
        not_service_accounts: one.not_service_accounts.into_iter().map(service_account).collect(),
    })
}

fn service_account(one: security::ServiceAccountMatch) -> authz::ServiceAccount {
    authz::ServiceAccount { namespace: one.namespace, service_account: one.service_account }
}

fn string_match(one: security::StringMatch) -> Result<StringMatch, String> {
    use security::string_match::MatchType;
    match one.match_type {
        Some(MatchType::Exact(exact)) => Ok(StringMatch::Exact(exact)),
        Some(MatchType::Prefix(prefix)) => Ok(StringMatch::Prefix(prefix)),
        Some(MatchType::Suffix(suffix)) => Ok(StringMatch::Suffix(suffix)),
        Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
        None => Err("a string match of no kind".into()),
    }
}

fn cidr(address: &security::Address) -> Result<Cidr, String> {
    let ip = ip(&address.address)?;
    u8::try_from(address.length)
        .ok()
        .and_then(|length| Cidr::new(ip, length))
        .ok_or_else(|| format!("prefix length {} for {ip}", address.length))
}

fn service(service: api::Service) -> Result<Service, String> {
    let key = format!("{}/{}", service.namespace, service.hostname);
    let vips = service
        .addresses
        .iter()
        .map(|address| Ok(NetworkIp { network: address.network.clone(), ip: ip(&address.address)? }))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|error| format!("service {key}: {error}"))?;
    let ports = service
        .ports
        .iter()
        .map(|port| {
            u16::try_from(port.service_port).map_err(|_| format!("service {key}: port {}", port.service_port))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Istio's ztunnel ignores a SAN that is no SPIFFE identity; so does this one.
    let subject_alt_names = service
        .subject_alt_names
        .iter()
        .filter_map(|san| {
            san.parse()
                .inspect_err(|error| tracing::warn!(service = %key, %error, "ignoring a subject alt name"))
                .ok()
        })
        .collect();
    let allow_unhealthy = service.load_balancing.as_ref().is_some_and(|balancing| {
        balancing.health_policy == i32::from(api::load_balancing::HealthPolicy::AllowAll)
    });
    let locality_preference = service.load_balancing.as_ref().and_then(locality_preference);
    let waypoint =
        service.waypoint.map(waypoint).transpose().map_err(|error| format!("service {key}: {error}"))?;
    Ok(Service {
        waypoint,
        name: service.name,
        namespace: service.namespace,
        hostname: service.hostname,
        vips,
        ports,
        allow_unhealthy,
        locality_preference,
        subject_alt_names,
    })
}

/// A Service's routing preference; none without scopes or a mode. The scopes end at one this
/// proxy does not know (a newer control plane's) rather than the Service being refused.
fn locality_preference(balancing: &api::LoadBalancing) -> Option<LocalityPreference> {
    use api::load_balancing::{Mode, Scope as Api};
    let scopes: Vec<LocalityScope> = balancing
        .routing_preference
        .iter()
        .map_while(|scope| match Api::try_from(*scope).ok()? {
            Api::Region => Some(LocalityScope::Region),
            Api::Zone => Some(LocalityScope::Zone),
            Api::Subzone => Some(LocalityScope::Subzone),
            Api::Node => Some(LocalityScope::Node),
            Api::Cluster => Some(LocalityScope::Cluster),
            Api::Network => Some(LocalityScope::Network),
            Api::UnspecifiedScope => None,
        })
        .collect();
    let strict = match Mode::try_from(balancing.mode) {
        Ok(Mode::Strict) => true,
        Ok(Mode::Failover) => false,
        // Unspecified (or a newer mode): no preference, as Istio's ztunnel reads it.
        _ => return None,
    };
    (!scopes.is_empty()).then_some(LocalityPreference { scopes, strict })
}

/// A `GatewayAddress`: a Service by namespace and hostname, or an address, and a port.
fn waypoint(gateway: api::GatewayAddress) -> Result<Waypoint, String> {
    let port = u16::try_from(gateway.hbone_mtls_port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("waypoint HBONE port {}", gateway.hbone_mtls_port))?;
    let address = match gateway.destination {
        Some(api::gateway_address::Destination::Hostname(name)) if !name.hostname.is_empty() => {
            WaypointAddress::Service(format!("{}/{}", name.namespace, name.hostname))
        }
        Some(api::gateway_address::Destination::Address(address)) => {
            WaypointAddress::Ip(NetworkIp { network: address.network, ip: ip(&address.address)? })
        }
        _ => return Err("waypoint without a destination".into()),
    };
    Ok(Waypoint { address, port })
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

    /// A response carrying `message` as resource `name`, of `type_url`.
    fn carrying(name: &str, type_url: &str, message: &impl Message) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            resources: vec![Resource {
                name: name.into(),
                version: "1".into(),
                resource: Some(prost_types::Any {
                    type_url: type_url.into(),
                    value: message.encode_to_vec(),
                }),
                aliases: vec![],
            }],
            ..Default::default()
        }
    }

    fn response(address: api::Address) -> DeltaDiscoveryResponse {
        carrying("x", api::ADDRESS_TYPE, &address)
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
    fn a_services_subject_alt_names_are_kept_and_one_that_is_no_identity_is_ignored() {
        let service = api::Address {
            r#type: Some(api::address::Type::Service(api::Service {
                name: "web".into(),
                namespace: "ns".into(),
                hostname: "web.ns.svc.cluster.local".into(),
                subject_alt_names: vec![
                    "spiffe://cluster.local/ns/ns/sa/web-canary".into(),
                    "web.example".into(),
                ],
                ..Default::default()
            })),
        };
        let converted = update(&response(service)).unwrap();
        let Address::Service(converted) = &converted.changed[0].2 else { panic!("not a service") };
        assert_eq!(
            converted.subject_alt_names,
            [crate::identity::Identity::new("cluster.local", "ns", "web-canary")]
        );
    }

    #[test]
    fn converts_a_workload_with_defaults_filled_in() {
        let converted = update(&response(workload(vec![vec![10, 0, 0, 1], vec![0; 16]]))).unwrap();
        let Address::Workload(converted) = &converted.changed[0].2 else { panic!("not a workload") };
        assert_eq!(converted.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap(), "::".parse().unwrap()]);
        assert_eq!(converted.service_account, "default");
        assert_eq!(converted.services["ns/web"], vec![PortMapping { service_port: 80, target_port: 80 }]);
        assert!(converted.healthy);
        // No workload name given: metrics fall back to the pod's.
        assert_eq!(converted.metrics_name(), converted.name);
        let mut named = workload(vec![]);
        if let Some(api::address::Type::Workload(workload)) = &mut named.r#type {
            workload.workload_name = "web".into();
        }
        let named = update(&response(named)).unwrap();
        let Address::Workload(converted) = &named.changed[0].2 else { panic!("not a workload") };
        assert_eq!(converted.metrics_name(), "web");
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
    }

    /// What a newer control plane (istiod) may send is no reason to refuse the response.
    #[test]
    fn an_unknown_tunnel_protocol_is_kept_as_unsupported_and_another_trust_domain_too() {
        let mut newer = workload(vec![vec![10, 0, 0, 1]]);
        if let Some(api::address::Type::Workload(workload)) = &mut newer.r#type {
            workload.tunnel_protocol = 2; // Istio's LEGACY_ISTIO_MTLS
            workload.trust_domain = "other.mesh".into();
            workload.namespace = "shop".into();
            workload.service_account = "web".into();
        }
        let converted = update(&response(newer)).unwrap();
        let Address::Workload(converted) = &converted.changed[0].2 else { panic!("not a workload") };
        assert_eq!(converted.protocol, TunnelProtocol::Unsupported);
        assert_eq!(converted.identity("cluster.local").to_string(), "spiffe://other.mesh/ns/shop/sa/web");
        let ours = update(&response(workload(vec![]))).unwrap();
        let Address::Workload(ours) = &ours.changed[0].2 else { panic!("not a workload") };
        assert!(ours.identity("cluster.local").to_string().starts_with("spiffe://cluster.local/"));
    }

    fn authorization(authorization: security::Authorization) -> DeltaDiscoveryResponse {
        let mut response = carrying("shop/allow", security::AUTHORIZATION_TYPE, &authorization);
        response.removed_resources = vec!["shop/old".into()];
        response
    }

    fn allow(matches: security::Match) -> security::Authorization {
        security::Authorization {
            name: "allow".into(),
            namespace: "shop".into(),
            scope: security::Scope::WorkloadSelector.into(),
            action: security::Action::Allow.into(),
            groups: vec![security::Group { rules: vec![security::Rules { matches: vec![matches] }] }],
            dry_run: false,
        }
    }

    #[test]
    fn converts_a_policy_with_its_matches() {
        use security::string_match::MatchType;
        let matches = security::Match {
            principals: vec![security::StringMatch { match_type: Some(MatchType::Presence(())) }],
            source_ips: vec![security::Address { address: vec![10, 244, 0, 0], length: 16 }],
            destination_ports: vec![8080],
            ..Default::default()
        };
        let update = policies(&authorization(allow(matches))).unwrap();
        assert_eq!(update.removed, ["shop/old"]);
        let (name, _, policy) = &update.changed[0];
        assert_eq!((name.as_str(), policy.key().as_str()), ("shop/allow", "shop/allow"));
        assert_eq!((policy.scope, policy.action), (Scope::WorkloadSelector, Action::Allow));
        let one = &policy.groups[0][0][0];
        assert_eq!(one.principals, [StringMatch::Presence]);
        assert_eq!(one.source_ips, [Cidr::new("10.244.0.0".parse().unwrap(), 16).unwrap()]);
        assert_eq!(one.destination_ports, [8080]);
    }

    #[test]
    fn malformed_policies_are_refused_with_a_reason() {
        let wide = security::Match {
            source_ips: vec![security::Address { address: vec![10, 0, 0, 0], length: 40 }],
            ..Default::default()
        };
        assert!(policies(&authorization(allow(wide))).unwrap_err().contains("prefix length 40"));
        let port = security::Match { destination_ports: vec![70000], ..Default::default() };
        assert!(policies(&authorization(allow(port))).unwrap_err().contains("port 70000"));
        let empty_string = security::Match {
            principals: vec![security::StringMatch { match_type: None }],
            ..Default::default()
        };
        assert!(policies(&authorization(allow(empty_string))).is_err());
        let mut audit = allow(security::Match::default());
        audit.action = 2;
        assert!(policies(&authorization(audit)).unwrap_err().contains("unknown action 2"));
    }
}
