"""Send one message through an SMTP server with Python's smtplib and print
every reply as JSON: MAIL FROM (with an optional SIZE=), each RCPT TO, and
DATA when a recipient was accepted."""
import argparse
import json
import smtplib

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--sender", default="")
ap.add_argument("--rcpt", action="append", required=True)
ap.add_argument("--size", type=int, default=0)
ap.add_argument("--data", required=True)
a = ap.parse_args()

with open(a.data, "rb") as f:
    data = f.read()
out = {}
with smtplib.SMTP("127.0.0.1", a.port, timeout=60) as s:
    s.ehlo("client.example.org")
    opts = ["SIZE=%d" % a.size] if a.size else []
    code, msg = s.mail(a.sender, opts)
    out["mail"] = [code, msg.decode()]
    out["rcpts"] = []
    for r in a.rcpt:
        code, msg = s.rcpt(r)
        out["rcpts"].append([code, msg.decode()])
    if any(c == 250 for c, _ in out["rcpts"]):
        try:
            code, msg = s.data(data)
        except smtplib.SMTPDataError as e:
            code, msg = e.smtp_code, e.smtp_error
        out["data"] = [code, msg.decode() if isinstance(msg, bytes) else msg]
    else:
        s.rset()
print(json.dumps(out))
