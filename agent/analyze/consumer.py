"""The consumer's side of the walk: client SG and NACLs, endpoint SG, state and principals.

In path order: ① client SG egress to the ENI IP, the client subnet NACL out and the endpoint
subnet NACL in (skipped within one subnet), ② endpoint SG ingress from the client IP, ③ the
endpoint connection state and the service's allowed principals (or why there is no endpoint);
after the provider's hops, the replies' NACLs on Linux's ephemeral ports 32768-60999.
"""

from __future__ import annotations

from typing import Any

from agent.analyze.fixes import sg_fix, sg_label
from agent.analyze.hops import PROTO, HopWalk, host_cidr
from agent.analyze.sg import evaluate_sg
from agent.model import EndpointService, arn_account, partition_of
from agent.results import HopFinding, HopStatus

#: endpoint states (DescribeVpcEndpoints State, lower-cased) and the fix for each
_STATE_FIX = {
    "pendingacceptance": "accept the connection",
    "rejected": "accept the connection (or delete and recreate the endpoint)",
    "expired": "delete and recreate the endpoint, then accept it within the acceptance window",
    "failed": "delete and recreate the endpoint",
    "pending": "wait for the endpoint to become available",
    "deleting": "recreate the endpoint",
    "deleted": "recreate the endpoint",
}


class ConsumerHops(HopWalk):
    """The consumer's hops of one flow (the endpoint's included)."""

    def consumer_hops(self) -> None:
        f, t = self.f, self.t
        eni_ip = f.eni_ip
        # ① client SG egress to the ENI IP (an SG reference to the endpoint SG matches through
        # membership: the ENI is a member of the endpoint's groups)
        if f.client is None or not self.visible(f.client.account):
            self.hidden(
                "client-sg-egress",
                "client-sg-egress",
                f"the client {f.client_name}'s instance and security groups are not visible",
            )
        elif eni_ip is None:
            self.hidden("client-sg-egress", "client-sg-egress", "no endpoint ENI to evaluate")
        else:
            d = evaluate_sg(t, f.client.sg_ids, "egress", eni_ip, PROTO, f.port)
            peer = self.endpoint_peer_text(eni_ip)
            self.add(
                self.sg_finding(
                    "client-sg-egress",
                    "client-sg-egress",
                    f.client.sg_ids,
                    d,
                    fix=sg_fix(t, f.client.sg_ids, ingress=False, port=f.port, peer=peer),
                )
            )
        # client subnet NACL out, endpoint subnet NACL in (same subnet: no boundary crossed)
        if eni_ip is not None:
            for finding in self.leg_hops("client-eni", "forward"):
                self.add(finding)
        else:
            self.hidden("client-nacl-out", "client-nacl", "no endpoint ENI to evaluate")

    def endpoint_peer_text(self, eni_ip: str) -> str:
        ep = self.f.endpoint
        if ep is not None and ep.sg_ids:
            return f"{sg_label(self.t, ep.sg_ids[0])} (or {host_cidr(eni_ip)}, the endpoint ENI)"
        return f"{host_cidr(eni_ip)} (the endpoint ENI)"

    def client_peer_text(self) -> str:
        """How the endpoint SG should name the client: its SG when referenceable, else its IP."""
        f = self.f
        ip = f"{host_cidr(f.client_ip)} ({f.client_name})"
        if f.client is None or not f.client.sg_ids or f.endpoint is None:
            return ip
        group = self.t.security_groups.get(f.client.sg_ids[0])
        if group is not None and self.t.routed(group.vpc_id, f.endpoint.vpc_id):
            return f"{sg_label(self.t, group.id)} (or {ip})"
        return ip

    def endpoint_hops(self) -> None:
        f, t = self.f, self.t
        ep = f.endpoint
        if ep is None:
            self.missing_endpoint()
            return
        # ② endpoint SG ingress from the client IP
        if not self.visible(ep.account):
            self.hidden(
                "endpoint-sg-ingress",
                "endpoint-sg-ingress",
                "the endpoint's security groups are not visible",
            )
        elif not ep.sg_ids:
            self.hidden(
                "endpoint-sg-ingress",
                "endpoint-sg-ingress",
                f"{ep.id} lists no security groups (the VPC default group applies)",
            )
        else:
            d = evaluate_sg(t, ep.sg_ids, "ingress", f.client_ip, PROTO, f.port)
            self.add(
                self.sg_finding(
                    "endpoint-sg-ingress",
                    "endpoint-sg-ingress",
                    ep.sg_ids,
                    d,
                    fix=sg_fix(
                        t, ep.sg_ids, ingress=True, port=f.port, peer=self.client_peer_text()
                    ),
                )
            )
        # ③b connection state: known to whoever sees the endpoint object
        label = f"{ep.id} ({ep.name})"
        if ep.is_available():
            self.add(
                HopFinding(
                    "endpoint-state",
                    "endpoint-acceptance",
                    "allowed",
                    resource=label,
                    rule="state available",
                )
            )
        else:
            svc = ep.service_id
            todo = _STATE_FIX.get(ep.state.lower(), "recreate the endpoint")
            fix = f"{todo}: {label} is {ep.state}"
            if "accept" in todo:
                fix += (
                    f" (aws ec2 accept-vpc-endpoint-connections --service-id {svc} "
                    f"--vpc-endpoint-ids {ep.id}, in the provider account)"
                )
            self.add(
                HopFinding(
                    "endpoint-state",
                    "endpoint-acceptance",
                    "denied",
                    resource=label,
                    rule=f"state {ep.state}",
                    checked=[f"state {ep.state}"],
                    detail=f"the endpoint connection is {ep.state}, not available",
                    ra_code="BAD_STATE",
                    fix=fix,
                )
            )

        def principal(status: HopStatus, **fields: Any) -> None:
            """One finding for the allowed-principals hop (its hop id is its control id)."""
            self.add(HopFinding("service-principal", "service-principal", status, **fields))

        # ③a allowed principals
        svc_obj = self.service
        if svc_obj is None or not self.visible(svc_obj.account) or not svc_obj.principals_known:
            # an endpoint that exists was created, so its requester was allowed then
            principal(
                "allowed",
                resource=ep.service_id,
                rule="the endpoint exists",
                detail="the service's permissions are not visible; the endpoint exists, "
                "so its requester was allowed when it was created",
            )
            return
        svc_label = f"{svc_obj.id} ({svc_obj.name})"
        if ep.requester:
            # a declared endpoint (the lab's topology names who creates it): it is created
            # from this declaration, so the permissions are checked as at creation
            requester = ep.requester
            allowed = t.service_allows(svc_obj, requester)
        else:
            # a snapshot does not say which principal created the endpoint: any principal of
            # its owner account (or "*") may have; blaming the account root would be a guess
            allowed = t.service_allows_account(svc_obj, self.account_id(ep.account))
            requester = self.root_of(ep.account)
        if allowed:
            principal(
                "allowed",
                resource=svc_label,
                rule=f"{requester} allowed",
                checked=list(svc_obj.allowed_principals),
            )
        elif not ep.requester:
            # an observed endpoint exists, so it was created while its account was allowed;
            # AWS keeps existing connections when a principal is removed (only rejecting the
            # connection cuts it; terraform-provider-aws #37260): not a blame
            principal(
                "allowed",
                resource=svc_label,
                rule="the endpoint exists: permissions gate creating endpoints, not "
                "existing connections",
                checked=list(svc_obj.allowed_principals) or ["(no allowed principals)"],
                detail=f"no principal of account {self.account_id(ep.account)} is an "
                f"allowed principal of {svc_obj.id} now; {ep.id} was created while one "
                "was, and AWS keeps an existing connection when a principal is removed. "
                "A new endpoint from this account would be refused; to cut this one off, "
                f"reject it (aws ec2 reject-vpc-endpoint-connections --service-id "
                f"{svc_obj.id} --vpc-endpoint-ids {ep.id})",
            )
        else:
            note = ""
            if ep.is_available():
                note = (
                    "; on AWS an endpoint accepted before the principal was removed keeps "
                    f"working: to cut it off, reject {ep.id}"
                )
            principal(
                "denied",
                resource=svc_label,
                checked=list(svc_obj.allowed_principals) or ["(no allowed principals)"],
                detail=f"{requester} is not an allowed principal of {svc_obj.id}{note}",
                ra_code="BAD_STATE",
                fix=self.principal_fix(svc_obj, requester, exact=True),
            )

    def account_id(self, account: str) -> str:
        acct = self.t.accounts.get(account)
        return acct.id if acct else account

    def root_of(self, account: str) -> str:
        """The account's root ARN in its partition (``arn:aws-us-gov:iam::…:root``)."""
        acct = self.t.accounts.get(account)
        if acct is not None:
            return acct.root_arn
        return f"arn:{partition_of(self.t.region)}:iam::{account}:root"

    def consumer_root(self) -> str:
        acct = self.t.accounts.get(self.f.client.account) if self.f.client else None
        acct = acct or self.t.account_of_role("consumer")
        if acct is not None:
            return acct.root_arn
        return f"arn:{partition_of(self.t.region)}:iam::CONSUMER:root"

    def principal_fix(self, svc: EndpointService, principal: str, *, exact: bool) -> str:
        """Allow ``principal`` (``exact``: the known requester) or, when who creates the
        endpoint is not known, the creating role or user -- the account root only as the
        account-wide choice. ``principal`` is already spelled in its account's partition."""
        cmd = (
            f"aws ec2 modify-vpc-endpoint-service-permissions --service-id {svc.id} "
            f"--add-allowed-principals {principal}"
        )
        if exact:
            return (
                f"add {principal} to the allowed principals of {svc.id} ({svc.name}) "
                f"({cmd}), then create the endpoint"
            )
        role = principal.removesuffix(":root") + ":role/ROLE-THAT-CREATES-THE-ENDPOINT"
        return (
            f"add the role or user that creates the endpoint (e.g. {role}) to the allowed "
            f"principals of {svc.id} ({svc.name}), or {principal} to allow every principal "
            f"of that account ({cmd}), then create the endpoint"
        )

    def missing_endpoint(self) -> None:
        """No endpoint for this client in a consumer view: say why only as far as we can see.

        AWS refuses CreateVpcEndpoint for a principal the service does not allow, so a missing
        endpoint *may* be the principal — but that is only known with the provider's view.
        """
        if not self.consumer_visible():
            self.hidden("endpoint-state", "endpoint-acceptance", "the endpoint is not visible")
            return
        svc = self.service
        detail = f"no interface endpoint in a VPC that {self.f.client_name} can route to"
        if svc is None and self.ambiguous_services:
            names = ", ".join(f"{s.id} ({s.name})" for s in self.ambiguous_services)
            self.hidden(
                "endpoint-exists",
                "service-principal",
                f"{detail}; the provider runs several load-balanced endpoint services ({names}) "
                "and no endpoint says which one this path is for",
                fix="name the endpoint with --endpoint once it exists, or create it to the "
                "service the client should reach",
            )
            return
        if svc is None or not self.visible(svc.account) or not svc.principals_known:
            self.hidden(
                "endpoint-exists",
                "service-principal",
                f"{detail}: it was never created (AWS refuses to create an endpoint when the "
                "consumer is not an allowed principal of the service) or it was deleted; the "
                "service's allowed principals are not visible from here",
                fix="ask the provider to allow this account's principal on the endpoint "
                "service, then create the interface endpoint",
            )
            return
        principal = self.consumer_root()
        acct_id = arn_account(principal)
        if self.t.service_allows_account(svc, acct_id):
            # some principal of the account may create it (the root, a role, "*"): the
            # endpoint is simply missing; name who may create it
            mine = [p for p in svc.allowed_principals if p == "*" or arn_account(p) == acct_id]
            who = ", ".join(mine)
            self.add(
                HopFinding(
                    "endpoint-exists",
                    "dns",
                    "denied",
                    resource=svc.id,
                    detail=f"{detail}, although {who} may create one on {svc.id}",
                    fix=f"create an interface endpoint to {svc.id} in {self.f.client_name}'s "
                    f"VPC as {who}",
                )
            )
            return
        self.add(
            HopFinding(
                "endpoint-exists",
                "service-principal",
                "denied",
                resource=f"{svc.id} ({svc.name})",
                checked=list(svc.allowed_principals) or ["(no allowed principals)"],
                detail=f"{detail}: no principal of account {acct_id} is an allowed principal "
                f"of {svc.id}, so AWS refused to create it",
                ra_code="BAD_STATE",
                fix=self.principal_fix(svc, principal, exact=False),
            )
        )

    # -- consumer return -------------------------------------------------------------------
    def consumer_return_hops(self) -> None:
        """The replies' NACLs between the endpoint ENI and the client (declared hops)."""
        if self.f.eni is None:
            return
        for finding in self.leg_hops("client-eni", "return"):
            self.add(finding)
