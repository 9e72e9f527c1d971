#!/usr/bin/env python3
"""A local Stripe for the tests and demos: PyPI `localstripe` (a stateful fake of Stripe's
API: customers, plans, payment methods, subscriptions, invoices, and webhooks it signs
exactly as Stripe does) plus the two hosted flows localstripe 1.15 lacks:

- Checkout: `POST /v1/checkout/sessions` (mode=subscription) answers with a session whose
  `url` is a payment page served here (`/pay/<id>`). Submitting that page's card form
  attaches the card to the customer *inside this server* and creates the subscription
  through localstripe, which then sends its signed `customer.subscription.created`
  webhook; the browser is sent on to the session's `success_url`.
- Customer portal: `POST /v1/billing_portal/sessions` answers with a portal page
  (`/portal/<id>`) where the customer switches plan or cancels; each change is made
  through localstripe and announced with a signed `customer.subscription.updated` or
  `customer.subscription.deleted` webhook, as Stripe's portal does.

It also binds to the address given (localstripe itself listens on every interface),
keeps its state in memory only (localstripe writes /tmp/localstripe.pickle), and lets a
test remove the webhook endpoint it registered (`DELETE /_config/webhooks/<id>`).

Usage: stripe-server.py --listen 127.0.0.1:19600
"""

import argparse
import html
import logging
import secrets

from aiohttp import web

import localstripe.resources as res

# In memory only: tests share this server and must not leave files behind.
res.Store.dump_to_disk = lambda self: None
res.Store.try_load_from_disk = lambda self: None

from localstripe import server as ls  # noqa: E402
from localstripe.errors import UserError  # noqa: E402
from localstripe.webhooks import _webhooks, schedule_webhook  # noqa: E402

sessions = {}


def new_id(prefix):
    return prefix + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")


def base_url(request):
    return f"{request.scheme}://{request.host}"


def require_key(request):
    if ls.get_api_key(request) is None:
        raise UserError(401, "Unauthorized")


def page(title, body):
    return web.Response(
        text=f"<!doctype html><html><head><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>",
        content_type="text/html",
    )


async def create_checkout_session(request):
    require_key(request)
    data = await ls.get_post_data(request) or {}
    items = data.get("line_items") or []
    try:
        assert data.get("mode") == "subscription"
        assert isinstance(data.get("customer"), str)
        assert isinstance(data.get("success_url"), str)
        assert isinstance(data.get("cancel_url"), str)
        assert isinstance(items, list) and len(items) == 1
        assert isinstance(items[0].get("price"), str)
    except AssertionError:
        raise UserError(
            400,
            "Bad request: this local Checkout takes mode=subscription, a customer, "
            "success_url, cancel_url and exactly one line_items[0][price]",
        )
    res.Customer._api_retrieve(data["customer"])  # 404 if unknown
    res.Plan._api_retrieve(items[0]["price"])  # 404 if unknown
    sid = new_id("cs_test_")
    s = {
        "id": sid,
        "object": "checkout.session",
        "mode": "subscription",
        "customer": data["customer"],
        "client_reference_id": data.get("client_reference_id"),
        "metadata": data.get("metadata") or {},
        "success_url": data["success_url"],
        "cancel_url": data["cancel_url"],
        "status": "open",
        "subscription": None,
        "url": f"{base_url(request)}/pay/{sid}",
        "_price": items[0]["price"],
        "_subscription_metadata": (data.get("subscription_data") or {}).get("metadata") or {},
    }
    sessions[sid] = s
    return ls.json_response({k: v for k, v in s.items() if not k.startswith("_")})


async def create_portal_session(request):
    require_key(request)
    data = await ls.get_post_data(request) or {}
    if not isinstance(data.get("customer"), str) or not isinstance(data.get("return_url"), str):
        raise UserError(400, "Bad request: customer and return_url are required")
    res.Customer._api_retrieve(data["customer"])
    sid = new_id("bps_")
    s = {
        "id": sid,
        "object": "billing_portal.session",
        "customer": data["customer"],
        "return_url": data["return_url"],
        "url": f"{base_url(request)}/portal/{sid}",
    }
    sessions[sid] = s
    return ls.json_response(s)


def session_of(sid, prefix):
    s = sessions.get(sid)
    if s is None or not s["id"].startswith(prefix):
        raise web.HTTPNotFound(text="no such session")
    return s


async def pay_page(request, sid):
    s = session_of(sid, "cs_test_")
    if s["status"] != "open":
        raise web.HTTPGone(text="this checkout session is complete")
    return page(
        "Pay with card (local Stripe Checkout)",
        f'<form method="post" action="/pay/{html.escape(s["id"])}">'
        '<label>Card number <input name="number" value="4242424242424242"></label>'
        '<label>Expiry month <input name="exp_month" value="12"></label>'
        '<label>Expiry year <input name="exp_year" value="2034"></label>'
        '<label>CVC <input name="cvc" value="123"></label>'
        '<button type="submit">Subscribe</button></form>'
        f'<a href="{html.escape(s["cancel_url"])}">Cancel</a>',
    )


async def pay(request, sid):
    s = session_of(sid, "cs_test_")
    if s["status"] != "open":
        raise web.HTTPGone(text="this checkout session is complete")
    form = await request.post()
    pm = res.PaymentMethod._api_create(
        type="card",
        card={
            "number": form.get("number", ""),
            "exp_month": form.get("exp_month", ""),
            "exp_year": form.get("exp_year", ""),
            "cvc": form.get("cvc", ""),
        },
    )
    res.PaymentMethod._api_attach(pm.id, customer=s["customer"])
    res.Customer._api_update(
        s["customer"], invoice_settings={"default_payment_method": pm.id}
    )
    sub = res.Subscription._api_create(
        customer=s["customer"],
        items=[{"plan": s["_price"]}],
        metadata=s["_subscription_metadata"],
    )
    s["status"] = "complete"
    s["subscription"] = sub.id
    raise web.HTTPSeeOther(s["success_url"])


def current_subscription(customer):
    subs = res.Subscription._api_list_all(None, customer=customer, limit=99)._list
    return subs[0] if subs else None


async def portal_page(request, sid):
    s = session_of(sid, "bps_")
    sub = current_subscription(s["customer"])
    plans = res.Plan._api_list_all(None, limit=99)._list
    if sub is None:
        body = "<p>No active subscription.</p>"
    else:
        options = "".join(
            f'<option value="{html.escape(p.id)}">{html.escape(p.nickname or p.id)}</option>'
            for p in plans
        )
        body = (
            f"<p>Current plan: {html.escape(sub.plan.id)}</p>"
            f'<form method="post" action="/portal/{s["id"]}/plan"><select name="price">{options}'
            '</select><button type="submit">Change plan</button></form>'
            f'<form method="post" action="/portal/{s["id"]}/cancel">'
            '<button type="submit">Cancel subscription</button></form>'
        )
    return page(
        "Manage your subscription (local Stripe customer portal)",
        body + f'<a href="{html.escape(s["return_url"])}">Return</a>',
    )


async def portal_plan(request, sid):
    s = session_of(sid, "bps_")
    form = await request.post()
    sub = current_subscription(s["customer"])
    if sub is None:
        raise web.HTTPConflict(text="no active subscription")
    res.Plan._api_retrieve(form.get("price", ""))
    res.Subscription._api_update(sub.id, items=[{"id": sub.items._list[0].id, "plan": form["price"]}])
    # localstripe announces no update; Stripe's portal does.
    schedule_webhook(res.Event("customer.subscription.updated", sub))
    raise web.HTTPSeeOther(s["return_url"])


async def portal_cancel(request, sid):
    s = session_of(sid, "bps_")
    sub = current_subscription(s["customer"])
    if sub is None:
        raise web.HTTPConflict(text="no active subscription")
    res.Subscription._api_delete(sub.id)  # sends customer.subscription.deleted
    raise web.HTTPSeeOther(s["return_url"])


async def delete_webhook(request, hook):
    _webhooks.pop(hook, None)
    return web.Response()


@web.middleware
async def hosted_first(request, handler):
    """Serves the hosted pages (opened by a browser, no API key) and the two session
    endpoints before localstripe's own authentication and routes."""
    path = request.path
    try:
        if path == "/v1/checkout/sessions" and request.method == "POST":
            return await create_checkout_session(request)
        if path == "/v1/billing_portal/sessions" and request.method == "POST":
            return await create_portal_session(request)
        parts = path.strip("/").split("/")
        if parts[0] == "pay" and len(parts) == 2:
            return await (pay_page if request.method == "GET" else pay)(request, parts[1])
        if parts[0] == "portal" and len(parts) >= 2:
            if len(parts) == 2:
                return await portal_page(request, parts[1])
            if parts[2:] == ["plan"] and request.method == "POST":
                return await portal_plan(request, parts[1])
            if parts[2:] == ["cancel"] and request.method == "POST":
                return await portal_cancel(request, parts[1])
        if parts[:2] == ["_config", "webhooks"] and len(parts) == 3 and request.method == "DELETE":
            return await delete_webhook(request, parts[2])
    except UserError as e:
        return e.to_response()
    return await handler(request)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:19600", help="HOST:PORT")
    a = p.parse_args()
    host, _, port = a.listen.rpartition(":")
    ls.app.middlewares.insert(0, hosted_first)
    # localstripe reports each webhook delivery (and failure) on this logger.
    delivery = logging.getLogger("aiohttp.access")
    delivery.setLevel(logging.INFO)
    delivery.addHandler(logging.StreamHandler())
    web.run_app(ls.app, host=host, port=int(port), access_log=None, print=None)


if __name__ == "__main__":
    main()
