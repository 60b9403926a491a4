require ["envelope", "fileinto"];
if envelope :all :is "auth" "boss@example.com" { fileinto "Auth"; }
if envelope :matches "auth" "*" { fileinto "AnyAuth"; }
if envelope :matches "to" "*" { fileinto "AnyTo"; }
