require ["vacation", "variables"];
if header :matches "subject" "*" { set "s" "${1}"; }
vacation :days 1 :subject "Re: ${s}" :from "Me <me@example.org>" :addresses ["me@example.org", "me@alias.example.org"] :mime text:
Content-Type: text/plain; charset=utf-8

Away.
.
;
