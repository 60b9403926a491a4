require ["envelope", "fileinto"];
if envelope :is "auth" "boss@example.com" { fileinto "Auth"; }
if envelope :matches "auth" "*" { fileinto "AnyAuth"; }
if envelope :matches "to" "*" { fileinto "AnyTo"; }
