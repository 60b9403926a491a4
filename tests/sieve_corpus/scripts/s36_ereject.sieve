require "ereject";
if address :domain :is "from" "example.biz" { ereject "Go away."; }
