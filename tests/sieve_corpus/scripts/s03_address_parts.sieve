require "fileinto";
if address :localpart :is "from" "boss" { fileinto "Local"; }
if address :all :is ["to", "cc"] "other@example.net" { fileinto "Cc-Other"; }
if address :domain :contains "from" "EXAMPLE.NET" { fileinto "Net"; }
